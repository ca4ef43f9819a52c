import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ohc_jax import conv


@pytest.mark.parametrize('shape,features', [((4, 32, 32, 3), 6), ((3, 14, 13, 6), 16),
                                            ((2, 96, 96, 3), 6)])
def test_conv2d_matches_flax_conv(shape, features):
  x = jax.random.normal(jax.random.key(0), shape)
  ours = conv.Conv2D(features, (5, 5))
  params = ours.init(jax.random.key(1), x)
  theirs = nn.Conv(features, (5, 5), padding='VALID', use_bias=False)
  f = lambda p, x: jnp.sum(jnp.sin(ours.apply(p, x)))
  g = lambda p, x: jnp.sum(jnp.sin(theirs.apply(p, x)))
  np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.grad(f, argnums=(0, 1))(params, x), jax.grad(g, argnums=(0, 1))(params, x)):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), a, b)


@pytest.mark.parametrize('shape', [(2, 28, 28, 6), (2, 21, 21, 16), (1, 5, 4, 2)])
def test_max_pool_matches_flax(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  ref = lambda x: nn.max_pool(x, (2, 2), (2, 2))
  np.testing.assert_array_equal(conv.max_pool_2x2(x), ref(x))
  weights = jax.random.normal(jax.random.key(1), ref(x).shape)
  np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(weights * conv.max_pool_2x2(x)))(x),
                             jax.grad(lambda x: jnp.sum(weights * ref(x)))(x))
