"""Encoders: Flax linen modules mapping a batch of inputs to latent vectors z."""

import flax.linen as nn
import jax.numpy as jnp

from ohc_jax.conv import Conv2D, max_pool_2x2

# PyTorch's BatchNorm defaults: running averages updated with momentum 0.1, epsilon 1e-5. Layers
# followed by BatchNorm have no bias: it would be cancelled by the normalisation, and Adam would turn
# its float-noise gradient into steps of size ~learning_rate.
_BatchNorm = lambda: nn.BatchNorm(momentum=0.9, epsilon=1e-5)


class SimpEncoder(nn.Module):
  """The reference's default: two conv-BN-ReLU-pool blocks (6, 16 channels, 5x5) and a dense layer."""
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


def make_encoder(config) -> nn.Module:
  """The encoder named by config.encoder."""
  if config.encoder == 'simp':
    return SimpEncoder(latent_dim=config.latent_dim)
  if config.encoder == 'mlp':
    return MLPEncoder(latent_dim=config.latent_dim, hidden_dim=config.hidden_dim)
  raise ValueError(f'unknown encoder {config.encoder!r}')


def preprocess(x, scale: float, offset: float):
  """Stored pixels (uint8 or float) to the encoder's input range, inside the jitted step."""
  return x.astype(jnp.float32) * scale + offset
