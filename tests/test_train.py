import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ohc_jax import models, sharding
from ohc_jax.core import methods
from ohc_jax.run import train
from ohc_jax.core.costs import cluster_costs
from ohc_jax.core.methods import make_method

pytestmark = pytest.mark.slow  # Every test trains a model.


@pytest.fixture
def _setup(build):
  def setup(config, num_devices=1):
    data, exp, state = build(config, num_devices)
    batch = {'image': data.train.images[:128], 'label': data.train.labels[:128]}
    return data, exp.mesh, exp.model, state, exp.train_step, batch
  return setup


def test_train_step_lowers_loss_on_a_fixed_batch(digits_config, _setup):
  _, mesh, _, state, step, batch = _setup(digits_config)
  losses = []
  for _ in range(30):
    state, m = step(state, sharding.to_global(batch, mesh))
    losses.append(float(m['loss']))
  assert int(state.step) == 30 and int(state.bad_step) == -1
  assert losses[-1] < 0.8 * losses[0]


def test_gradients_reach_encoder_and_centroids(digits_config, _setup):
  data, _, model, state, _, batch = _setup(digits_config)
  method = make_method(digits_config)
  x = models.preprocess(batch['image'], data.scale, data.offset)

  def loss_fn(params):
    z, _ = model.apply({'params': params['encoder'], 'batch_stats': state.batch_stats}, x,
                       train=True, mutable=['batch_stats'])
    costs = cluster_costs(z, params['centroids'], digits_config.sigma, state.log_prior)
    return method(costs, jnp.zeros_like(state.counts), state.duals, state.log_prior)[2]

  grads = jax.grad(loss_fn)(state.params)
  assert float(jnp.abs(grads['centroids']).sum()) > 0
  for leaf in jax.tree.leaves(grads['encoder']):
    assert float(jnp.abs(leaf).sum()) > 0


def test_non_finite_input_stops_the_run_naming_the_step(digits_config, _setup):
  _, mesh, _, state, step, batch = _setup(digits_config)
  state, _ = step(state, sharding.to_global(batch, mesh))
  good = jax.device_get(state.params)
  bad = dict(batch, image=np.full(batch['image'].shape, np.nan, np.float32))
  state, _ = step(state, sharding.to_global(bad, mesh))
  state, _ = step(state, sharding.to_global(batch, mesh))
  assert int(state.bad_step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), good)
  with pytest.raises(train.NonFiniteError, match='step 1'):
    train._raise_if_bad(state)


def test_default_run_end_to_end_and_deterministic(digits_config, tmp_path):
  digits_config.num_epochs = 8
  results = train.train_and_evaluate(digits_config, str(tmp_path / 'a'))
  lines = (tmp_path / 'a' / 'metrics.jsonl').read_text().splitlines()
  assert len(lines) == 8
  record = json.loads(lines[-1])
  for key in ('acc', 'nmi', 'ari', 'kl_star', 'num_nonempty', 'hard_sizes', 'soft_sizes',
              'train_loss', 'train_images_per_s'):
    assert key in record
  assert json.loads((tmp_path / 'a' / 'config.json').read_text())['dataset'] == 'digits'
  saved = json.loads((tmp_path / 'a' / 'results.json').read_text())
  assert saved['final']['epoch'] == 8 and 'epoch' in saved['best_nmi']
  final = results['final']
  assert final['acc'] > 0.5 and final['nmi'] > 0.5  # Chance is about 0.1 and 0.
  assert final['num_nonempty'] == 10 and min(final['hard_sizes']) > 0
  again = train.train_and_evaluate(digits_config, str(tmp_path / 'b'))
  strip = lambda r: {k: v for k, v in r.items() if k != 'train_images_per_s'}
  assert strip(again['final']) == strip(final)


def test_keep_counts_changes_training(digits_config, tmp_path):
  digits_config.num_epochs = 1
  a = train.train_and_evaluate(digits_config, str(tmp_path / 'a'))
  digits_config.keep_counts = True
  b = train.train_and_evaluate(digits_config, str(tmp_path / 'b'))
  assert a['final']['train_loss'] != b['final']['train_loss']


def test_entropy_reference_reports_the_entries_it_refused_in_the_step_logs(digits_config, tmp_path,
                                                                           _setup):
  """At sigma 3 the shifted costs (log-normaliser -17.6) change sign within rows: the step's
  refused_entries is entropy_reference's count for its batch, and reaches steps.jsonl."""
  digits_config.method, digits_config.sigma = 'entropy_reference', 3.0
  data, mesh, model, state, step, batch = _setup(digits_config)
  x = models.preprocess(batch['image'], data.scale, data.offset)
  z, _ = model.apply({'params': state.params['encoder'], 'batch_stats': state.batch_stats}, x,
                     train=True, mutable=['batch_stats'])
  costs = cluster_costs(z, state.params['centroids'], digits_config.sigma, state.log_prior)
  expected = int(methods.refused_entries(costs + methods.log_normaliser(digits_config)))
  _, m = step(state, sharding.to_global(batch, mesh))
  assert int(m['method']['refused_entries']) == expected > 0
  digits_config.num_epochs = 1
  train.train_and_evaluate(digits_config, str(tmp_path / 'run'))
  lines = [json.loads(line) for line in (tmp_path / 'run' / 'steps.jsonl').read_text().splitlines()]
  assert lines and all(isinstance(line['refused_entries'], int) for line in lines)
  assert sum(line['refused_entries'] for line in lines) > 0
