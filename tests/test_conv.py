import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ohc_jax.models import conv


def _assert_trees_close(a, b, tol):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=tol, atol=tol), a, b)


@pytest.mark.parametrize('shape,features,kernel_size,use_bias', [
    ((4, 32, 32, 3), 6, (5, 5), True),  # CIFAR-10, first layer.
    ((4, 14, 14, 6), 16, (5, 5), False),  # CIFAR-10, second layer.
    ((2, 96, 96, 3), 6, (5, 5), True),  # STL-10, first layer.
    ((2, 46, 46, 6), 16, (5, 5), True),  # STL-10, second layer.
    ((3, 14, 13, 6), 16, (5, 5), True),  # Odd width.
    ((2, 15, 17, 4), 5, (3, 3), True),
    ((2, 9, 12, 2), 3, (4, 2), False),
    ((2, 7, 8, 3), 4, (1, 1), True),
])
def test_conv2d_matches_flax_conv(shape, features, kernel_size, use_bias):
  x = jax.random.normal(jax.random.key(0), shape)
  ours = conv.Conv2D(features, kernel_size, use_bias=use_bias)
  theirs = nn.Conv(features, kernel_size, padding='VALID', use_bias=use_bias)
  params = ours.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, params, theirs.init(jax.random.key(1), x))
  params = jax.tree.map(lambda p: p + 0.1, params)  # A non-zero bias.
  np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-5, atol=1e-5)
  f = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))
  _assert_trees_close(jax.grad(f(ours), argnums=(0, 1))(params, x),
                      jax.grad(f(theirs), argnums=(0, 1))(params, x), 1e-4)


@pytest.mark.parametrize('shape,features', [((3, 32, 32, 3), 6), ((3, 14, 14, 6), 16),
                                            ((2, 96, 96, 3), 6), ((2, 12, 16, 2), 3)])
def test_phase_layout_block_matches_conv_batchnorm_relu_pool(shape, features):
  """conv (phases) -> BatchNorm -> pool -> ReLU equals nn.Conv -> BatchNorm -> ReLU -> nn.max_pool."""
  x = jax.random.normal(jax.random.key(0), shape)

  class Ours(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = conv.Conv2D(features, (5, 5), use_bias=False, phases=True)(x)
      x = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)(x)
      return nn.relu(conv.max_pool_phases(x))

  class Theirs(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(features, (5, 5), padding='VALID', use_bias=False)(x)
      x = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)(x)
      return nn.max_pool(nn.relu(x), (2, 2), (2, 2))

  variables = Ours().init(jax.random.key(1), x)
  rename = lambda tree: {name.replace('Conv2D', 'Conv'): value for name, value in tree.items()}
  theirs_variables = {kind: rename(tree) for kind, tree in variables.items()}
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a.shape, b.shape), theirs_variables,
               Theirs().init(jax.random.key(1), x))
  weights = jax.random.normal(jax.random.key(2), Ours().apply(variables, x, mutable=True)[0].shape)

  def loss(module, variables):
    def f(params, x):
      y, new = module.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
      return jnp.sum(weights * y), new
    return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(variables['params'], x)

  (ours, ours_stats), (ours_dparams, ours_dx) = loss(Ours(), variables)
  (theirs, theirs_stats), (theirs_dparams, theirs_dx) = loss(Theirs(), theirs_variables)
  np.testing.assert_allclose(ours, theirs, rtol=1e-4)
  _assert_trees_close(rename(ours_stats), theirs_stats, 1e-5)
  _assert_trees_close(rename(ours_dparams), theirs_dparams, 1e-4)
  np.testing.assert_allclose(ours_dx, theirs_dx, rtol=1e-4, atol=1e-4)


def test_conv2d_phases_layout_and_odd_output():
  x = jax.random.normal(jax.random.key(0), (2, 12, 10, 3))
  kernel = jax.random.normal(jax.random.key(1), (5, 5, 3, 4))
  full = conv.conv2d(x, kernel)  # (2, 8, 6, 4)
  phases = conv.conv2d_phases(x, kernel)
  assert phases.shape == (2, 4, 3, 4, 4)
  for p in range(2):
    for q in range(2):
      np.testing.assert_allclose(phases[:, :, :, 2 * p + q], full[:, p::2, q::2], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='even output size'):
    conv.conv2d_phases(x[:, :11], kernel)


@pytest.mark.parametrize('shape', [(2, 28, 28, 6), (2, 21, 21, 16), (1, 5, 4, 2)])
def test_max_pool_matches_flax(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  ref = lambda x: nn.max_pool(x, (2, 2), (2, 2))
  np.testing.assert_array_equal(conv.max_pool_2x2(x), ref(x))
  weights = jax.random.normal(jax.random.key(1), ref(x).shape)
  np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(weights * conv.max_pool_2x2(x)))(x),
                             jax.grad(lambda x: jnp.sum(weights * ref(x)))(x))


def test_configure_xla_cpu_is_additive_and_respects_the_user(monkeypatch):
  import jaxlib.version
  monkeypatch.setattr(jaxlib.version, '__version__', conv._YNN_VERIFIED_JAXLIB[0])
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  assert conv.configure_xla_cpu()
  assert os.environ['XLA_FLAGS'] == '--xla_force_host_platform_device_count=2 ' + conv._YNN_FLAG
  assert not conv.configure_xla_cpu()  # Once only.
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=')
  assert not conv.configure_xla_cpu()
  assert os.environ['XLA_FLAGS'] == '--xla_cpu_experimental_ynn_fusion_type='
  monkeypatch.delenv('XLA_FLAGS')
  monkeypatch.setattr(jaxlib.version, '__version__', '0.0.0')
  assert not conv.configure_xla_cpu()
  assert 'XLA_FLAGS' not in os.environ


def _convolutions_in_ynn_fusions(hlo: str) -> int:
  blocks = (block.strip() for block in hlo.split('\n\n'))
  computations = {block.split(' ', 1)[0].lstrip('%'): block for block in blocks}
  called = re.findall(r'calls=%([\w.]+).*"kind":"__ynn_fusion"', hlo)
  return sum(computations[name].count(' convolution(') for name in called)


@pytest.mark.slow
def test_configure_xla_cpu_flag_is_accepted_and_keeps_convolutions_off_ynnpack():
  """In fresh processes: the flag acts at backend start, and an unknown flag would abort it."""
  code = (
      'import sys\n'
      'from ohc_jax.models import conv\n'
      'print(conv.configure_xla_cpu() if sys.argv[1] == "configure" else False)\n'
      'import jax, jax.numpy as jnp\n'
      'f = jax.jit(jax.grad(lambda k, x: jnp.sum(jax.lax.conv_general_dilated(\n'
      '    x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)))\n'
      'print(f.lower(jnp.ones((5, 5, 3, 6)), jnp.ones((256, 32, 32, 3))).compile().as_text())\n')
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['PYTHONPATH'] = os.pathsep.join([os.path.dirname(os.path.dirname(conv.__file__)),
                                       env.get('PYTHONPATH', '')])
  run = lambda arg: subprocess.run([sys.executable, '-c', code, arg], env=env, capture_output=True,
                                   text=True, timeout=300, check=True).stdout.split('\n', 1)
  added, hlo = run('configure')
  if added == 'False':
    pytest.skip('the flag is not verified on this jaxlib')
  assert 'convolution(' in hlo and _convolutions_in_ynn_fusions(hlo) == 0
  assert _convolutions_in_ynn_fusions(run('default')[1]) > 0  # What the flag is for.
