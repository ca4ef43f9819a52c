"""The paper's CKM baseline: its decoder, its two phases, and a resumed run."""

import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ohc_jax import configuration, models
from ohc_jax.core import methods
from ohc_jax.run import steps, train
from ohc_jax.core.costs import param_costs
from ohc_jax.errors import UsageError
from ohc_jax.run.train_state import create_train_state, make_optimizer
from ohc_jax.run.inference import load_trained


@pytest.mark.parametrize('shape', [(32, 32, 3), (28, 28, 1), (8, 8, 1), (96, 96, 3)])
def test_decoder_output_has_the_input_shape(shape):
  decoder = models.CKMDecoder(shape, 128)
  params = decoder.init(jax.random.key(0), jnp.zeros((2, 128)))
  out = decoder.apply(params, jax.random.normal(jax.random.key(1), (4, 128)))
  assert out.shape == (4,) + shape
  assert np.all(np.isfinite(np.asarray(out)))


def test_cifar_decoder_has_the_reference_layers():
  """build_convt_net(3, 32, 128, 3) (utils.py:71-75 at 1ad8983): 128 -> 36 -> 10 -> 3 channels,
  kernels 3, 4, 5, stride 3, no padding."""
  assert models.decoder_layers((32, 32, 3), 128) == [(36, 3, 3, 0), (10, 4, 3, 0), (3, 5, 3, 0)]


def test_ckm_refuses_inputs_that_are_not_square_images(digits_config):
  with pytest.raises(UsageError, match='--config.method'):
    models.decoder_layers((512, 9), 128)
  digits_config.method = 'ckm'
  for dataset in ('realdisp', 'vectors:x.npz'):
    digits_config.dataset = dataset
    with pytest.raises(UsageError, match='reconstructs images'):
      configuration.validate(digits_config)
  digits_config.dataset, digits_config.ckm_pretrain_frac = 'digits', 1.5
  with pytest.raises(UsageError, match='--config.ckm_pretrain_frac'):
    configuration.validate(digits_config)


def _ckm_setup(config, build):
  """One step per epoch, two epochs: step 0 pretrains, step 1 adds the clustering term."""
  config.method, config.num_epochs = 'ckm', 2
  data, exp, state = build(config, num_train=config.batch_size)
  batch = {'image': data.train.images[:128], 'label': data.train.labels[:128]}
  x = models.preprocess(batch['image'], data.scale, data.offset)
  return data, exp.mesh, exp.model, state, exp.train_step, exp.to_global(batch), x


def _costs(model, state, x, config, encoder=None):
  z, _ = model.apply({'params': encoder or state.params['encoder'],
                      'batch_stats': state.batch_stats}, x, train=True, mutable=['batch_stats'])
  return param_costs(z, {**state.params, 'encoder': encoder or state.params['encoder']},
                     config.sigma, state.log_prior)


def test_pretraining_loss_is_the_reconstruction_alone(digits_config, build):
  _, _, model, state, step, batch, x = _ckm_setup(digits_config, build)
  before = jax.device_get(state.params)
  decoder = models.CKMDecoder(x.shape[1:], digits_config.latent_dim)
  rec = methods.ckm_reconstruction(
      lambda v: decoder.apply({'params': before['decoder']}, v), before['centroids'],
      _costs(model, state, x, digits_config), x, jax.random.fold_in(jax.random.key(0), 0))
  new, m = step(state, batch)
  np.testing.assert_allclose(float(m['loss']), float(rec), rtol=1e-6)
  after = jax.device_get(new.params)
  # The clustering term has no effect: the encoder, which only it reaches, does not move.
  jax.tree.map(np.testing.assert_array_equal, after['encoder'], before['encoder'])
  jax.tree.map(np.testing.assert_array_equal, after['decoder'], before['decoder'])
  assert np.abs(after['centroids'] - before['centroids']).max() > 1e-4


def test_after_pretraining_the_encoder_follows_1e7_times_the_argmin_cost(digits_config, build):
  """Adam's first step moves each parameter by -lr g / (|g| + 1e-8): with g = 1e-7 x the gradient of
  the mean argmin cost it is far from the -lr sign(g) that weight 1 would give."""
  _, _, model, state, step, batch, x = _ckm_setup(digits_config, build)
  state = state.replace(step=jnp.ones((), jnp.int32))  # Past the pretraining step.
  before = jax.device_get(state.params['encoder'])
  grads = jax.grad(lambda enc: jnp.mean(jnp.min(_costs(model, state, x, digits_config, enc),
                                                axis=1)))(before)
  lr = digits_config.learning_rate
  expected = jax.tree.map(lambda p, g: p - lr * 1e-7 * g / (1e-7 * jnp.abs(g) + 1e-8),
                          before, grads)
  after = jax.device_get(step(state, batch)[0].params['encoder'])
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6), after,
               expected)
  moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(after),
                                                          jax.tree.leaves(before)))
  assert 1e-5 < moved < 0.5 * lr


def test_ckm_run_trains_resumes_exactly_and_keeps_its_decoder(digits_config, tmp_path,
                                                              monkeypatch):
  """Digits, 2 epochs of 14 steps: reconstruction only in epoch 1, then the clustering term; a
  SIGTERM in epoch 1 and a resume give the uninterrupted run's results."""
  digits_config.update(method='ckm', num_epochs=2)
  straight = train.train_and_evaluate(digits_config, str(tmp_path / 'a'))
  final = straight['final']
  assert np.isfinite(final['train_loss']) and 1 <= final['num_nonempty'] <= 10
  make = steps.make_train_step

  def signalling(*args, **kwargs):
    step_fn, calls = make(*args, **kwargs), [0]

    def wrapped(state, batch):
      calls[0] += 1
      if calls[0] == 5:
        signal.raise_signal(signal.SIGTERM)
      return step_fn(state, batch)
    return wrapped

  monkeypatch.setattr(steps, 'make_train_step', signalling)
  with pytest.raises(train.interrupts.Interrupted):
    train.train_and_evaluate(digits_config, str(tmp_path / 'b'))
  monkeypatch.undo()
  resumed = train.train_and_evaluate(digits_config, str(tmp_path / 'b'))
  strip = lambda r: {k: v for k, v in r.items() if k != 'train_images_per_s'}
  assert strip(resumed['final']) == strip(final)
  trained = load_trained(str(tmp_path / 'b'))
  model, tx = models.make_encoder(digits_config), make_optimizer(digits_config)
  initial = create_train_state(digits_config, model, tx, (8, 8, 1), jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(trained.state.params['decoder']),
               jax.device_get(initial.params['decoder']))
