"""Encoders: Flax linen modules mapping a batch of inputs to latent vectors z."""

import flax.linen as nn
import jax.numpy as jnp

from ohc_jax.conv import Conv2D, max_pool_2x2

# PyTorch's BatchNorm defaults: running averages updated with momentum 0.1, epsilon 1e-5. Layers
# followed by BatchNorm have no bias: it would be cancelled by the normalisation, and Adam would turn
# its float-noise gradient into steps of size ~learning_rate.
_BatchNorm = lambda: nn.BatchNorm(momentum=0.9, epsilon=1e-5)


class SimpEncoder(nn.Module):
  """The reference's default encoder (docs/fidelity.md): two conv-BN-ReLU-pool blocks (6, 16
  channels, 5x5) and a dense layer."""
  latent_dim: int

  @nn.compact
  def __call__(self, x, train: bool):
    for features in (6, 16):
      x = Conv2D(features, (5, 5))(x)
      x = _BatchNorm()(x, use_running_average=not train)
      x = max_pool_2x2(nn.relu(x))
    return nn.Dense(self.latent_dim)(x.reshape(x.shape[0], -1))


class MLPEncoder(nn.Module):
  """Dense -> BatchNorm -> ReLU -> dense, for vectors and tiny images."""
  latent_dim: int
  hidden_dim: int = 256

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(self.hidden_dim, use_bias=False)(x.reshape(x.shape[0], -1))
    x = nn.relu(_BatchNorm()(x, use_running_average=not train))
    return nn.Dense(self.latent_dim)(x)


class Conv1DEncoder(nn.Module):
  """The reference's RealDisp encoder (docs/fidelity.md) over (B, T, C) sensor windows (there a
  Conv2d net over (T, C) one-channel images): three conv layers over time with 4, 8, 16 channels, kernels 50, 40, 7 and
  strides 2, 2, 1, shared by the C sensor channels (computed as 1-D convolutions over B * C series,
  3x faster on XLA:CPU than the 2-D form), then one with latent_dim channels and a 4 x C kernel that
  spans them all; BatchNorm (not on the last), LeakyReLU 0.3 and a max-pool of 2 over time after
  each. For T = 512 one time step remains, the output (the mean over what remains, for other T)."""
  latent_dim: int

  @nn.compact
  def __call__(self, x, train: bool):
    b, t, c = x.shape
    x = x.transpose(0, 2, 1).reshape(b * c, t, 1)
    for features, kernel, stride in ((4, 50, 2), (8, 40, 2), (16, 7, 1)):
      x = nn.Conv(features, (kernel,), (stride,), padding='VALID', use_bias=False)(x)
      x = _BatchNorm()(x, use_running_average=not train)
      x = nn.max_pool(nn.leaky_relu(x, 0.3), (2,), (2,))
    x = x.reshape(b, c, *x.shape[1:]).transpose(0, 2, 1, 3)  # (B, T', C, 16)
    x = nn.Conv(self.latent_dim, (4, c), padding='VALID')(x)
    x = nn.max_pool(nn.leaky_relu(x, 0.3), (2, 1), (2, 1))
    return jnp.mean(x, axis=(1, 2))


class _BasicBlock(nn.Module):
  features: int
  stride: int

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda f, k, s, p: nn.Conv(f, (k, k), (s, s), padding=((p, p), (p, p)), use_bias=False)
    bn = lambda y: _BatchNorm()(y, use_running_average=not train)
    y = nn.relu(bn(conv(self.features, 3, self.stride, 1)(x)))
    y = bn(conv(self.features, 3, 1, 1)(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = bn(conv(self.features, 1, self.stride, 0)(x))
    return nn.relu(x + y)


class ResNet18(nn.Module):
  """ResNet-18 (torchvision's layout: stages of 64, 128, 256, 512 channels, two basic blocks each),
  average-pooled into a dense layer to latent_dim. Inputs of 96 px and more get the ImageNet stem
  (7x7 stride-2 conv, 3x3 stride-2 max-pool, as the reference's torchvision model, which has it at
  every size: docs/fidelity.md); smaller ones, 32-px CIFAR images, the usual CIFAR stem (3x3
  stride-1 conv, no pool), which keeps their resolution."""
  latent_dim: int

  @nn.compact
  def __call__(self, x, train: bool):
    if min(x.shape[1:3]) >= 64:
      x = nn.Conv(64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False)(x)
      x = nn.relu(_BatchNorm()(x, use_running_average=not train))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    else:
      x = nn.Conv(64, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)(x)
      x = nn.relu(_BatchNorm()(x, use_running_average=not train))
    for i, features in enumerate((64, 128, 256, 512)):
      x = _BasicBlock(features, 1 if i == 0 else 2)(x, train)
      x = _BasicBlock(features, 1)(x, train)
    return nn.Dense(self.latent_dim)(jnp.mean(x, axis=(1, 2)))


def make_encoder(config) -> nn.Module:
  """The encoder named by config.encoder."""
  if config.encoder == 'simp':
    return SimpEncoder(latent_dim=config.latent_dim)
  if config.encoder == 'mlp':
    return MLPEncoder(latent_dim=config.latent_dim, hidden_dim=config.hidden_dim)
  if config.encoder == 'conv1d':
    return Conv1DEncoder(latent_dim=config.latent_dim)
  if config.encoder == 'resnet18':
    return ResNet18(latent_dim=config.latent_dim)
  raise ValueError(f'unknown encoder {config.encoder!r}')


def preprocess(x, scale: float, offset: float):
  """Stored pixels (uint8 or float) to the encoder's input range, inside the jitted step."""
  return x.astype(jnp.float32) * scale + offset
