"""Convolution and pooling for small-channel image encoders, shaped for XLA:CPU.

XLA:CPU runs convolutions with 3 or 6 channels poorly: a 5x5 convolution of a 256 x 32x32x3 batch to 6
channels takes 20 ms forward and its input gradient 55 ms on a 2-core CPU. Here a VALID convolution is
computed on the space-to-depth input (2x2 pixel blocks as channels: 12 channels for RGB) with the
kernel of the four output phases (24 output channels for 6): each output block of 2x2 pixels is one
output position, a 3x3 convolution for a 5x5 kernel. It does 1.4x the arithmetic in shapes the CPU
runs 3x faster (7 ms forward, 9 ms input gradient, 8 ms kernel gradient for that layer).

The phase layout `(batch, rows / 2, columns / 2, 4, channels)`, with `4 = 2 x 2` output phases, also
makes the 2x2 max-pool a maximum over axis 3. An encoder block can stay in it:

    x = Conv2D(6, (5, 5), use_bias=False, phases=True)(x)   # (B, 14, 14, 4, 6) for 32x32 inputs
    x = nn.BatchNorm(momentum=0.9, epsilon=1e-5)(x, use_running_average=not train)
    x = nn.relu(max_pool_phases(x))                          # (B, 14, 14, 6)

which has the parameters, statistics and values of nn.Conv -> nn.BatchNorm -> ReLU -> 2x2 max-pool
(BatchNorm normalises over every axis but the last, so over the same values in either layout).

`configure_xla_cpu` keeps XLA:CPU's YNNPACK library off convolutions: its kernel gradient of the first
layer takes 80 ms against Eigen's 10 ms.

Other backends run small-channel convolutions well, so there `Conv2D` and `max_pool_2x2` take the
plain path (`lax.conv_general_dilated`, `nn.max_pool`): config.conv_impl 'auto' picks by backend
(`resolve_impl`), and both paths have the same parameters and, to float tolerance, the same values.
"""

import os

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DIMS = ('NHWC', 'HWIO', 'NHWC')
_YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'
_YNN_VERIFIED_JAXLIB = ('0.10.2',)  # Versions known to accept _YNN_FLAG (an unknown flag is fatal).
IMPLS = ('auto', 'space_to_depth', 'plain')


def resolve_impl(impl: str) -> str:
  """config.conv_impl as run: 'auto' is space-to-depth on the CPU backend and plain elsewhere."""
  if impl == 'auto':
    return 'space_to_depth' if jax.default_backend() == 'cpu' else 'plain'
  return impl


def configure_xla_cpu() -> bool:
  """Adds the XLA:CPU flag that keeps convolutions off YNNPACK to `XLA_FLAGS`; True if added.

  It takes effect only if called before JAX initialises its backend (importing jax is fine, running
  anything on a device is not). Nothing is added for a jaxlib the flag was not verified on, nor when
  `XLA_FLAGS` already sets xla_cpu_experimental_ynn_fusion_type.
  """
  import jaxlib.version
  flags = os.environ.get('XLA_FLAGS', '')
  if (jaxlib.version.__version__ not in _YNN_VERIFIED_JAXLIB
      or 'xla_cpu_experimental_ynn_fusion_type' in flags):
    return False
  os.environ['XLA_FLAGS'] = f'{flags} {_YNN_FLAG}'.strip()
  return True


def _space_to_depth(x):
  """(B, 2H, 2W, C) -> (B, H, W, 4C), channels ordered (row in block, column in block, c)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // 2, w // 2, 4 * c)


def _phase_kernel(kernel):
  """HWIO kernel -> the kernel of its space-to-depth convolution, outputs ordered (phase, o).

  Output phase (p, q) at block (Y, X) is the output at pixel (2Y + p, 2X + q): the kernel shifted by
  (p, q) within a window of whole blocks.
  """
  kh, kw, ci, co = kernel.shape
  bh, bw = kh // 2 + 1, kw // 2 + 1  # Blocks spanned by the kernel at any phase.
  phases = []
  for p in range(2):
    for q in range(2):
      k = jnp.pad(kernel, ((p, 2 * bh - kh - p), (q, 2 * bw - kw - q), (0, 0), (0, 0)))
      phases.append(k.reshape(bh, 2, bw, 2, ci, co).transpose(0, 2, 1, 3, 4, 5))
  return jnp.stack(phases, axis=-2).reshape(bh, bw, 4 * ci, 4 * co)


def _conv_blocks(x, kernel):
  """VALID stride-1 convolution in phase layout, rounded up to whole 2x2 blocks of outputs."""
  kh, kw = kernel.shape[:2]
  h, w = x.shape[1:3]
  rows, cols = -(-(h - kh + 1) // 2), -(-(w - kw + 1) // 2)  # Output blocks.
  pad_h, pad_w = 2 * (rows + kh // 2) - h, 2 * (cols + kw // 2) - w  # Input to whole blocks.
  x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
  y = lax.conv_general_dilated(_space_to_depth(x), _phase_kernel(kernel), (1, 1), 'VALID',
                               dimension_numbers=_DIMS)
  return y.reshape(*y.shape[:3], 4, kernel.shape[-1])


def conv2d_phases(x, kernel):
  """VALID stride-1 convolution of NHWC `x` with HWIO `kernel`, as (B, Ho/2, Wo/2, 4, O).

  `out[b, Y, X, 2p + q, o]` is the convolution's output at row 2Y + p, column 2X + q. The output
  height Ho and width Wo must be even.
  """
  ho, wo = x.shape[1] - kernel.shape[0] + 1, x.shape[2] - kernel.shape[1] + 1
  if ho % 2 or wo % 2:
    raise ValueError(f'phase layout needs an even output size, got {ho}x{wo}')
  return _conv_blocks(x, kernel)


def conv2d(x, kernel):
  """VALID stride-1 convolution of NHWC `x` with HWIO `kernel`, as lax.conv_general_dilated."""
  ho, wo = x.shape[1] - kernel.shape[0] + 1, x.shape[2] - kernel.shape[1] + 1
  y = _conv_blocks(x, kernel)
  b, rows, cols, _, o = y.shape
  y = y.reshape(b, rows, cols, 2, 2, o).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(b, 2 * rows, 2 * cols, o)[:, :ho, :wo]


class Conv2D(nn.Module):
  """`nn.Conv(features, kernel_size, padding='VALID', use_bias=use_bias, dtype=dtype)` through
  space-to-depth, or (impl 'plain') through lax.conv_general_dilated itself.

  Parameters as nn.Conv's, float32 whatever `dtype` (the computation's): 'kernel' (kh, kw, in,
  features) drawn from lecun_normal, 'bias' (features,) zeros; `init` with the same key gives
  nn.Conv's values. With `phases` (space-to-depth only), the output is in the phase layout of
  `conv2d_phases` instead of NHWC.
  """
  features: int
  kernel_size: tuple[int, int]
  use_bias: bool = True
  phases: bool = False
  impl: str = 'space_to_depth'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if self.impl == 'plain':
      if self.phases:
        raise ValueError('the phase layout is the space-to-depth path\'s: use impl space_to_depth')
      y = lax.conv_general_dilated(x, kernel, (1, 1), 'VALID', dimension_numbers=_DIMS)
    else:
      y = (conv2d_phases if self.phases else conv2d)(x, kernel)
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


def max_pool_phases(y):
  """2x2 max-pool, stride 2, of a phase-layout (B, H, W, 4, C) array: (B, H, W, C).

  Its gradient goes to the maximum, split evenly between tied maxima where nn.max_pool gives it to
  one of them; after a ReLU, tied maxima of zero get no gradient either way.
  """
  return y.max(axis=3)


def max_pool_2x2(x, impl: str = 'space_to_depth'):
  """2x2 max-pool, stride 2, of NHWC `x`, dropping an odd last row or column (as nn.max_pool).

  A reshape and a maximum: its gradient avoids select-and-scatter, slow on XLA:CPU. Ties as in
  `max_pool_phases`. impl 'plain': nn.max_pool itself, for the other backends.
  """
  if impl == 'plain':
    return nn.max_pool(x, (2, 2), (2, 2))
  b, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
