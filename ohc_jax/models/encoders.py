"""Encoders: Flax linen modules mapping a batch of inputs to latent vectors z; the `ckm` decoder.

Each takes `dtype`, the dtype of its activations and convolutions (config.compute_dtype): its
parameters and BatchNorm statistics stay float32 (flax's param_dtype; BatchNorm reduces in float32),
and its output z is float32, so the cost table, the assignment, losses and metrics are float32
whatever the encoder computes in.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import ohc_jax.models.conv as conv
from ohc_jax.models.conv import Conv2D, max_pool_2x2
from ohc_jax.errors import UsageError

COMPUTE_DTYPES = ('float32', 'bfloat16')


# PyTorch's BatchNorm defaults: running averages updated with momentum 0.1, epsilon 1e-5. Layers
# followed by BatchNorm have no bias: it would be cancelled by the normalisation, and Adam would turn
# its float-noise gradient into steps of size ~learning_rate.
def _BatchNorm(dtype):
  return nn.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32)


class SimpEncoder(nn.Module):
  """The reference's default encoder (docs/fidelity.md): two conv-BN-ReLU-pool blocks (6, 16
  channels, 5x5) and a dense layer. conv_impl: 'space_to_depth' or 'plain' (models/conv.py), the
  same parameters either way."""
  latent_dim: int
  conv_impl: str = 'space_to_depth'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    for features in (6, 16):
      x = Conv2D(features, (5, 5), impl=self.conv_impl, dtype=self.dtype)(x)
      x = _BatchNorm(self.dtype)(x, use_running_average=not train)
      x = max_pool_2x2(nn.relu(x), self.conv_impl)
    x = nn.Dense(self.latent_dim, dtype=self.dtype)(x.reshape(x.shape[0], -1))
    return x.astype(jnp.float32)


class MLPEncoder(nn.Module):
  """Dense -> BatchNorm -> ReLU -> dense, for vectors and tiny images."""
  latent_dim: int
  hidden_dim: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(self.hidden_dim, use_bias=False, dtype=self.dtype)(x.reshape(x.shape[0], -1))
    x = nn.relu(_BatchNorm(self.dtype)(x, use_running_average=not train))
    return nn.Dense(self.latent_dim, dtype=self.dtype)(x).astype(jnp.float32)


class Conv1DEncoder(nn.Module):
  """The reference's RealDisp encoder (docs/fidelity.md) over (B, T, C) sensor windows (there a
  Conv2d net over (T, C) one-channel images): three conv layers over time with 4, 8, 16 channels, kernels 50, 40, 7 and
  strides 2, 2, 1, shared by the C sensor channels (computed as 1-D convolutions over B * C series,
  3x faster on XLA:CPU than the 2-D form), then one with latent_dim channels and a 4 x C kernel that
  spans them all; BatchNorm (not on the last), LeakyReLU 0.3 and a max-pool of 2 over time after
  each. For T = 512 one time step remains, the output (the mean over what remains, for other T)."""
  latent_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    b, t, c = x.shape
    x = x.transpose(0, 2, 1).reshape(b * c, t, 1)
    for features, kernel, stride in ((4, 50, 2), (8, 40, 2), (16, 7, 1)):
      x = nn.Conv(features, (kernel,), (stride,), padding='VALID', use_bias=False,
                  dtype=self.dtype)(x)
      x = _BatchNorm(self.dtype)(x, use_running_average=not train)
      x = nn.max_pool(nn.leaky_relu(x, 0.3), (2,), (2,))
    x = x.reshape(b, c, *x.shape[1:]).transpose(0, 2, 1, 3)  # (B, T', C, 16)
    x = nn.Conv(self.latent_dim, (4, c), padding='VALID', dtype=self.dtype)(x)
    x = nn.max_pool(nn.leaky_relu(x, 0.3), (2, 1), (2, 1))
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class _BasicBlock(nn.Module):
  features: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda f, k, s, p: nn.Conv(f, (k, k), (s, s), padding=((p, p), (p, p)), use_bias=False,
                                      dtype=self.dtype)
    bn = lambda y: _BatchNorm(self.dtype)(y, use_running_average=not train)
    y = nn.relu(bn(conv(self.features, 3, self.stride, 1)(x)))
    y = bn(conv(self.features, 3, 1, 1)(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = bn(conv(self.features, 1, self.stride, 0)(x))
    return nn.relu(x + y)


class ResNet18(nn.Module):
  """ResNet-18 (torchvision's layout: stages of 64, 128, 256, 512 channels, two basic blocks each),
  average-pooled into a dense layer to latent_dim. Inputs of 64 px and more get the ImageNet stem
  (7x7 stride-2 conv, 3x3 stride-2 max-pool, as the reference's torchvision model, which has it at
  every size: docs/fidelity.md); smaller ones, 32-px CIFAR images, the usual CIFAR stem (3x3
  stride-1 conv, no pool), which keeps their resolution."""
  latent_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda k, s, p: nn.Conv(64, (k, k), (s, s), padding=((p, p), (p, p)), use_bias=False,
                                   dtype=self.dtype)
    if min(x.shape[1:3]) >= 64:
      x = conv(7, 2, 3)(x)
      x = nn.relu(_BatchNorm(self.dtype)(x, use_running_average=not train))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    else:
      x = conv(3, 1, 1)(x)
      x = nn.relu(_BatchNorm(self.dtype)(x, use_running_average=not train))
    for i, features in enumerate((64, 128, 256, 512)):
      x = _BasicBlock(features, 1 if i == 0 else 2, self.dtype)(x, train)
      x = _BasicBlock(features, 1, dtype=self.dtype)(x, train)
    x = nn.Dense(self.latent_dim, dtype=self.dtype)(jnp.mean(x, axis=(1, 2)))
    return x.astype(jnp.float32)


def compute_dtype(config):
  """The dtype of config.compute_dtype."""
  return jnp.dtype(config.compute_dtype)


# Encoders by name (config.encoder): the constructor of each from the config.
ENCODERS = {
    'simp': lambda config: SimpEncoder(latent_dim=config.latent_dim,
                                       conv_impl=conv.resolve_impl(config.conv_impl),
                                       dtype=compute_dtype(config)),
    'mlp': lambda config: MLPEncoder(latent_dim=config.latent_dim, hidden_dim=config.hidden_dim,
                                     dtype=compute_dtype(config)),
    'conv1d': lambda config: Conv1DEncoder(latent_dim=config.latent_dim,
                                           dtype=compute_dtype(config)),
    'resnet18': lambda config: ResNet18(latent_dim=config.latent_dim, dtype=compute_dtype(config)),
}


def make_encoder(config) -> nn.Module:
  """The encoder named by config.encoder, computing in config.compute_dtype."""
  return ENCODERS[config.encoder](config)


def make_decoder(config, image_shape) -> nn.Module:
  """The CKM decoder of images of `image_shape`, computing in config.compute_dtype."""
  return CKMDecoder(tuple(image_shape), config.latent_dim, dtype=compute_dtype(config))


def _geometric(start: int, end: int, n: int) -> list[int]:
  """n integers from start to end growing by a constant factor, rounded down, the last set to end."""
  base = (end / start) ** (1 / (n - 1))
  return [int(start * base ** i) for i in range(n - 1)] + [end]


def decoder_layers(image_shape, latent_dim: int, num_layers: int = 3):
  """(features, kernel, stride, crop) of each transposed convolution taking a 1x1 latent_dim map to
  an (S, S, C) image: sizes grow geometrically from 1 to S, channels shrink geometrically from
  latent_dim to C, and each layer's stride is the size ratio rounded down and its kernel the rest,
  widened to 3 with a crop of each side when smaller (the rule of the reference's build_convt_net,
  utils.py:60-96 at 1ad8983; for 32x32x3 and nz 128: 36, 10, 3 channels, kernels 3, 4, 5, stride 3)."""
  if len(image_shape) != 3 or image_shape[0] != image_shape[1]:
    raise UsageError(f'method ckm decodes square images, not inputs of shape {tuple(image_shape)}: '
                     f'use another --config.method')
  size, channels = image_shape[0], image_shape[2]
  sizes = _geometric(1, size, num_layers + 1)
  features = _geometric(channels, latent_dim, num_layers + 1)[::-1][1:]
  layers = []
  for n_in, n_out, f in zip(sizes, sizes[1:], features):
    stride = n_out // n_in
    kernel, crop = n_out - stride * (n_in - 1), 0
    if kernel < 3:
      crop = -(-(3 - kernel) // 2)
      kernel += 2 * crop
    layers.append((f, kernel, stride, crop))
  return layers


def _torch_convtranspose_init(key, shape, dtype=jnp.float32):
  """PyTorch's default ConvTranspose2d kernel: U(+-1 / sqrt(fan)), fan = out channels x kernel area
  (torch reads the fan from dimension 1 of its (in, out, kh, kw) kernel)."""
  bound = (shape[0] * shape[1] * shape[3]) ** -0.5
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class CKMDecoder(nn.Module):
  """The reference's CKM decoder (train.py:94-95 at 37a5908, utils.py:38-58 at 1ad8983): per layer a
  transposed convolution, BatchNorm on the batch's statistics and LeakyReLU 0.3, the last layer
  included. The reference never steps its optimizer, so its BatchNorm keeps weight 1 and bias 0 and
  stays in train mode: here a plain normalisation, and no conv bias (the normalisation cancels it).
  Transposed convolutions in `dtype`, the normalisation's statistics and the output in float32."""
  image_shape: tuple
  latent_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, v):
    x = v.reshape(v.shape[0], 1, 1, v.shape[-1])
    for features, kernel, stride, crop in decoder_layers(self.image_shape, self.latent_dim):
      x = nn.ConvTranspose(features, (kernel, kernel), (stride, stride), padding='VALID',
                           use_bias=False, kernel_init=_torch_convtranspose_init,
                           dtype=self.dtype)(x)
      if crop:
        x = x[:, crop:-crop, crop:-crop]
      x = x.astype(jnp.float32)
      mean = jnp.mean(x, axis=(0, 1, 2))
      var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
      x = nn.leaky_relu((x - mean) * jax.lax.rsqrt(var + 1e-5), 0.3).astype(self.dtype)
    return x.astype(jnp.float32)


def preprocess(x, scale: float, offset: float):
  """Stored pixels (uint8 or float) to the encoder's input range, inside the jitted step."""
  return x.astype(jnp.float32) * scale + offset
