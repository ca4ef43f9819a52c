"""Convolution and pooling for small-channel image encoders, shaped for XLA:CPU.

XLA:CPU computes the weight gradient of a convolution with 3 or 6 input channels slowly (83 ms for
the reference's first layer at batch 256 on a 2-core CPU). `conv2d` keeps XLA's forward convolution
and input gradient, and computes the weight gradient as one contraction per kernel offset (47 ms);
`max_pool_2x2` is a reshape and a max, whose gradient avoids select-and-scatter.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DIMS = ('NHWC', 'HWIO', 'NHWC')


def _conv(x, kernel):
  return lax.conv_general_dilated(x, kernel, (1, 1), 'VALID', dimension_numbers=_DIMS)


@jax.custom_vjp
def conv2d(x, kernel):
  """VALID, stride-1 2-D convolution of NHWC inputs with an HWIO kernel."""
  return _conv(x, kernel)


def _conv2d_fwd(x, kernel):
  return _conv(x, kernel), (x, kernel)


def _conv2d_bwd(residuals, grad):
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  height, width = grad.shape[1:3]
  grad_x = jax.vjp(lambda x: _conv(x, kernel), x)[1](grad)[0]
  grad_kernel = jnp.stack([
      jnp.stack([jnp.einsum('bhwc,bhwo->co', x[:, i:i + height, j:j + width], grad)
                 for j in range(kw)]) for i in range(kh)])
  return grad_x, grad_kernel.astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv2D(nn.Module):
  """`nn.Conv(features, kernel_size, padding='VALID', use_bias=False)` computed with `conv2d`."""
  features: int
  kernel_size: tuple[int, int]

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    return conv2d(x, kernel)


def max_pool_2x2(x):
  """2x2 max-pool, stride 2, dropping an odd last row or column (as PyTorch's max_pool2d)."""
  b, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
