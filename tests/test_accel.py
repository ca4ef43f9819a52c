"""Accelerator readiness: bfloat16 compute (config.compute_dtype), the convolution path chosen by
backend (config.conv_impl) and the cost table's pinned precision."""

import os
import signal

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ohc_jax import configuration, models
from ohc_jax.core import costs
from ohc_jax.errors import UsageError
from ohc_jax.models import conv
from ohc_jax.run import experiment, interrupts, steps, train

# One input per encoder: (encoder, input shape, extra config).
_ENCODER_INPUTS = [('simp', (32, 32, 3)), ('mlp', (8, 8, 1)), ('resnet18', (32, 32, 3)),
                   ('conv1d', (512, 3))]


def _config(**overrides):
  c = configuration.base_config()
  c.update(num_devices=1, batch_size=16, latent_dim=16, num_clusters=4, hidden_dim=32,
           **overrides)
  return c


def _dtypes(tree):
  return {str(x.dtype) for x in jax.tree.leaves(tree)}


def _inputs(shape, n=16, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, *shape)), jnp.float32)


@pytest.mark.parametrize('shape', [(32, 32, 3), (28, 28, 1), (17, 17, 2)])
def test_simp_conv_paths_share_parameters_and_outputs(shape):
  space, plain = (models.SimpEncoder(latent_dim=16, conv_impl=impl)
                  for impl in ('space_to_depth', 'plain'))
  x = _inputs(shape)
  variables = space.init(jax.random.key(0), x, train=False)
  # The same tree and values: a checkpoint of either path restores into the other.
  jax.tree.map(np.testing.assert_array_equal, variables,
               plain.init(jax.random.key(0), x, train=False))
  for train_mode in (False, True):
    (a, sa), (b, sb) = (m.apply(variables, x, train=train_mode, mutable=['batch_stats'])
                        for m in (space, plain))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5), sa, sb)

  def loss(params, model):
    z, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
    return jnp.sum(jnp.sin(z))
  ga, gb = (jax.grad(loss)(variables['params'], m) for m in (space, plain))
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-3, atol=1e-4), ga, gb)


def test_auto_picks_the_path_by_backend(monkeypatch):
  assert conv.resolve_impl('auto') == 'space_to_depth'  # The tests run on the CPU backend.
  assert models.make_encoder(_config()).conv_impl == 'space_to_depth'
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert conv.resolve_impl('auto') == 'plain'
  assert models.make_encoder(_config()).conv_impl == 'plain'
  assert models.make_encoder(_config(conv_impl='space_to_depth')).conv_impl == 'space_to_depth'


def test_new_fields_are_validated():
  for field, value in (('compute_dtype', 'float16'), ('conv_impl', 'winograd')):
    c = configuration.from_file(os.path.join(configuration.CONFIG_DIR, 'default.py'))
    c[field] = value
    with pytest.raises(UsageError, match=f'--config.{field}='):
      configuration.validate(c)


@pytest.mark.parametrize('encoder,shape', _ENCODER_INPUTS)
def test_bfloat16_encoders_keep_float32_parameters_statistics_and_outputs(encoder, shape):
  c16 = _config(encoder=encoder, compute_dtype='bfloat16')
  m32, m16 = models.make_encoder(_config(encoder=encoder)), models.make_encoder(c16)
  x = _inputs(shape, n=8)
  variables = m16.init(jax.random.key(0), x, train=False)
  jax.tree.map(np.testing.assert_array_equal, variables,
               m32.init(jax.random.key(0), x, train=False))  # The same initial state.
  assert _dtypes(variables) == {'float32'}
  z16, new16 = m16.apply(variables, x, train=True, mutable=['batch_stats'])
  z32, _ = m32.apply(variables, x, train=True, mutable=['batch_stats'])
  assert z16.dtype == jnp.float32 and _dtypes(new16) <= {'float32'}
  # bfloat16 keeps 8 bits of mantissa: the encodings agree to a few percent of their scale.
  np.testing.assert_allclose(z16, z32, atol=0.05 * float(jnp.std(z32)) + 1e-3, rtol=0.05)
  assert not np.array_equal(z16, z32)  # It does compute in bfloat16.
  # Its intermediate values are bfloat16: the jaxpr has convolutions or products in bfloat16.
  jaxpr = str(jax.make_jaxpr(lambda v: m16.apply(v, x, train=False))(variables))
  assert 'bf16' in jaxpr


def test_bfloat16_ckm_decoder_computes_in_bfloat16_with_float32_output():
  v = _inputs((16,), n=8)
  d32 = models.make_decoder(_config(), (8, 8, 1))
  d16 = models.make_decoder(_config(compute_dtype='bfloat16'), (8, 8, 1))
  params = d16.init(jax.random.key(0), v)
  assert _dtypes(params) == {'float32'}
  out16, out32 = d16.apply(params, v), d32.apply(params, v)
  assert out16.dtype == jnp.float32 and out16.shape == (8, 8, 8, 1)
  np.testing.assert_allclose(out16, out32, atol=0.1)
  assert not np.array_equal(out16, out32)


def _train_steps(config, shape, num_steps=3):
  spec = experiment.InputSpec(shape, 'float32', 1.0, 0.0, num_train=config.batch_size * 4)
  exp = experiment.build(config, spec)
  state = exp.init_state(seed=0)
  rng = np.random.default_rng(1)
  losses = []
  for _ in range(num_steps):
    batch = {'image': rng.normal(size=(config.batch_size, *shape)).astype(np.float32),
             'label': np.zeros(config.batch_size, np.int64)}
    state, metrics = exp.train_step(state, exp.to_global(batch))
    losses.append(float(metrics['loss']))
  return state, losses


@pytest.mark.slow
@pytest.mark.parametrize('encoder,shape', _ENCODER_INPUTS)
def test_bfloat16_train_step_trains_every_encoder_in_float32_state(encoder, shape):
  c = _config(encoder=encoder, compute_dtype='bfloat16', learning_rate=1e-2)
  state, losses = _train_steps(c, shape)
  assert int(state.bad_step) == -1 and all(np.isfinite(losses))
  assert int(state.step) == 3
  # Parameters, Adam's moments and BatchNorm statistics stay float32.
  assert _dtypes(state.params) == {'float32'} and _dtypes(state.batch_stats) <= {'float32'}
  assert {d for d in _dtypes(state.opt_state) if d.startswith(('float', 'bfloat'))} == {'float32'}


@pytest.mark.slow
def test_bfloat16_ckm_train_step():
  c = _config(method='ckm', encoder='mlp', compute_dtype='bfloat16')
  state, losses = _train_steps(c, (8, 8, 1))
  assert int(state.bad_step) == -1 and all(np.isfinite(losses))
  assert _dtypes(state.params['decoder']) == {'float32'}


@pytest.mark.slow
def test_bfloat16_on_eight_devices_agrees_with_one(digits_config):
  """Sharded over 8 simulated devices, the bfloat16 step gives the one-device step's labels (its
  per-device convolutions and BatchNorm reductions may round differently: labels are compared on
  the first steps, where no tie is near)."""
  from tests.test_sharding import _digits_batches, _run_steps
  digits_config.compute_dtype = 'bfloat16'
  batches = _digits_batches(digits_config, 3)
  params1, labels1 = _run_steps(digits_config, 1, batches)
  params8, labels8 = _run_steps(digits_config, 8, batches)
  agree = np.mean([np.mean(a == b) for a, b in zip(labels1, labels8)])
  assert agree > 0.97, agree
  assert _dtypes(params8) == {'float32'}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-2, rtol=0), params1, params8)


@pytest.mark.slow
def test_bfloat16_run_resumes_exactly_after_sigterm(digits_config, tmp_path, monkeypatch):
  digits_config.update(num_epochs=2, checkpoint_every_steps=4, compute_dtype='bfloat16')
  whole = train.train_and_evaluate(digits_config.copy_and_resolve_references(),
                                   str(tmp_path / 'whole'))
  make = steps.make_train_step

  def make_signalling(*args, **kwargs):
    step_fn, calls = make(*args, **kwargs), [0]

    def wrapped(state, batch):
      calls[0] += 1
      if calls[0] == 19:  # During epoch 2.
        os.kill(os.getpid(), signal.SIGTERM)
      return step_fn(state, batch)
    return wrapped

  monkeypatch.setattr(steps, 'make_train_step', make_signalling)
  work = str(tmp_path / 'cut')
  with pytest.raises(interrupts.Interrupted):
    train.train_and_evaluate(digits_config.copy_and_resolve_references(), work)
  monkeypatch.undo()
  resumed = train.train_and_evaluate(digits_config.copy_and_resolve_references(), work)
  strip = lambda r: {k: v for k, v in r['final'].items() if k != 'train_images_per_s'}
  assert strip(resumed) == strip(whole) and resumed['final']['step'] == 28


@pytest.mark.slow
def test_a_checkpoint_of_one_conv_path_restores_into_the_other(digits_config, tmp_path):
  """Trained and checkpointed with the space-to-depth path, restored and run with the plain one:
  the same encodings to float tolerance, the same clusters."""
  import cv2
  from ohc_jax.run.inference import load_trained
  rng = np.random.default_rng(0)
  for label in range(2):
    os.makedirs(tmp_path / 'images' / str(label))
    for i in range(32):
      cv2.imwrite(str(tmp_path / 'images' / str(label) / f'{i}.png'),
                  rng.integers(0, 256, (16, 16, 3), np.uint8))
  digits_config.update(dataset=f'folder:{tmp_path / "images"}', encoder='simp', num_clusters=2,
                       batch_size=16, num_epochs=1, conv_impl='space_to_depth')
  work = str(tmp_path / 'run')
  train.train_and_evaluate(digits_config, work)
  trained = load_trained(work, num_devices=1)
  config = trained.config.copy_and_resolve_references()
  config.conv_impl = 'plain'
  meta = trained.meta
  spec = experiment.InputSpec(tuple(meta['input_shape']), meta.get('input_dtype', 'float32'),
                              meta['scale'], meta['offset'])
  plain = experiment.build(config, spec, trained.mesh, train=False)
  assert trained.model.conv_impl == 'space_to_depth' and plain.model.conv_impl == 'plain'
  jax.tree.map(lambda a, b: None, trained.state, plain.init_state(seed=0))  # Same structure.
  batch = plain.to_global({'image': rng.integers(0, 256, (64, 16, 16, 3), np.uint8)})
  a, b = trained.eval_step(trained.state, batch), plain.eval_step(trained.state, batch)
  np.testing.assert_allclose(a['z'], b['z'], rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(a['cluster'], b['cluster'])


def test_cost_table_products_are_pinned_to_highest_precision():
  z, mu = _inputs((16,), n=8), _inputs((16,), n=4, seed=1)
  params = {'centroids': mu, **costs.covariance_params(_config(covariance='estimated'))}
  for p in ({'centroids': mu}, params,
            {'centroids': mu, 'log_precision': jnp.zeros((4, 16))}):
    jaxpr = jax.make_jaxpr(lambda z: costs.param_costs(z, p, 100.0, jnp.zeros(4)))(z)
    dots = [e for e in jaxpr.eqns if e.primitive.name == 'dot_general']
    assert dots and all(e.params['precision'] is not None and
                        set(e.params['precision']) == {jax.lax.Precision.HIGHEST} for e in dots)
