"""The method options: soft_train, warm_start, constrained_eval and the covariance choices."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ohc_jax import models
from ohc_jax.core import assign, costs as cost_fns, methods
from ohc_jax.data import pipeline
from ohc_jax.run import evaluation, train
from ohc_jax.errors import UsageError
from ohc_jax.run.inference import load_trained


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if 'nmi' in r]


@pytest.mark.slow
def test_soft_train_loss_is_the_softmax_weighted_cost(digits_config):
  digits_config.soft_train = True
  costs = jax.random.normal(jax.random.key(0), (32, 10)) ** 2
  zeros = jnp.zeros(10)
  labels, counts, loss, _, _ = methods.make_method(digits_config)(
      costs, jnp.zeros(10, jnp.int32), zeros, zeros)
  weights = np.exp(-np.asarray(costs)) / np.exp(-np.asarray(costs)).sum(1, keepdims=True)
  np.testing.assert_allclose(float(loss), (weights * np.asarray(costs)).sum(1).mean(), rtol=1e-5)
  np.testing.assert_array_equal(labels, assign.combination_assign(costs)[0])  # Labels unchanged.
  # The weights are held constant: the gradient is the weights over the batch size.
  grad = jax.grad(lambda c: methods.soft_loss(c))(costs)
  np.testing.assert_allclose(grad, weights / 32, rtol=1e-5)


def test_soft_train_with_a_loss_of_its_own_is_refused(digits_config):
  from ohc_jax import configuration
  digits_config.soft_train, digits_config.method = True, 'entropy'
  with pytest.raises(UsageError, match='soft_train'):
    configuration.validate(digits_config)


def test_warm_start_puts_centroids_on_the_first_encodings(digits_config, build):
  digits_config.warm_start = True
  data, exp, state = build(digits_config)
  first = pipeline.epoch_permutation(len(data.train), digits_config.seed, 1)
  warmed = exp.warm_start(state, data.train.images[first[:digits_config.batch_size]])
  x = models.preprocess(data.train.images[first[:digits_config.batch_size]], data.scale,
                        data.offset)
  z, _ = exp.model.apply({'params': state.params['encoder'], 'batch_stats': state.batch_stats}, x,
                     train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(warmed.params['centroids'], z[:digits_config.num_clusters],
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(warmed.params['centroids'], state.params['centroids'])


def test_warm_start_with_too_few_points_is_refused(digits_config):
  digits_config.warm_start, digits_config.max_examples, digits_config.batch_size = True, 8, 8
  with pytest.raises(UsageError, match='warm_start needs num_clusters=10'):
    train.train_and_evaluate(digits_config, '/tmp/ohc_unused_warm_start')


@pytest.mark.slow
def test_constrained_eval_is_combination_assignment_batch_by_batch(digits_config, build):
  digits_config.constrained_eval = True
  digits_config.eval_batch_size = 200  # 1797 points: the last batch is padded.
  data, exp, state = build(digits_config)
  model = exp.model
  out = evaluation.evaluate(exp.eval_step, state, data.eval, digits_config, exp.mesh).outputs
  assert out['cluster'].shape == (len(data.eval),)
  expected = []
  for start in range(0, len(data.eval), 200):
    x = models.preprocess(data.eval.images[start:start + 200], data.scale, data.offset)
    z = model.apply({'params': state.params['encoder'], 'batch_stats': state.batch_stats}, x,
                    train=False)
    costs = cost_fns.cluster_costs(z, state.params['centroids'], digits_config.sigma,
                                   state.log_prior)
    expected.append(np.asarray(assign.combination_assign(costs)[0]))
  np.testing.assert_array_equal(out['cluster'], np.concatenate(expected))
  # At initialisation argmin puts most points in few clusters; the constrained labels spread out.
  assert len(np.unique(out['cluster'])) == 10


@pytest.mark.slow
def test_learned_diagonal_starts_at_the_fixed_cost_and_is_trained(digits_config):
  digits_config.covariance = 'learned_diagonal'
  params = {'centroids': jax.random.normal(jax.random.key(0), (10, 32)),
            **cost_fns.covariance_params(digits_config)}
  z = jax.random.normal(jax.random.key(1), (16, 32))
  zero = jnp.zeros(10)
  fixed = cost_fns.cluster_costs(z, params['centroids'], digits_config.sigma, zero)
  np.testing.assert_allclose(cost_fns.param_costs(z, params, digits_config.sigma, zero), fixed,
                             rtol=1e-4, atol=1e-4)
  grad = jax.grad(lambda p: cost_fns.param_costs(z, p, digits_config.sigma, zero).mean())(params)
  assert float(jnp.abs(grad['log_precision']).sum()) > 0


def test_estimated_precisions_and_the_too_few_points_case():
  rng = np.random.default_rng(0)
  scales = np.array([1.0, 3.0])
  z = np.concatenate([rng.normal(size=(4000, 2)) * scales, rng.normal(size=(4000, 2)) + 10])
  labels = np.repeat([0, 1], 4000)
  precision, why = cost_fns.estimate_precisions(z, labels, 2, sigma=1.0)
  assert why is None
  # Cluster 0's precisions are 1 / variances (up to the common rescaling): ratio 9 along axis 0.
  ratio = precision[0, 0, 0] / precision[0, 1, 1]
  assert abs(ratio - 9) < 0.6
  precision, why = cost_fns.estimate_precisions(z, np.r_[np.zeros(7999, int), 1], 2, sigma=1.0)
  assert precision is None and 'clusters [1] hold [1] points' in why


@pytest.mark.slow
def test_estimated_covariance_run_reestimates_after_each_epoch(digits_config, tmp_path):
  digits_config.covariance = 'estimated'
  digits_config.latent_dim = 8
  digits_config.num_epochs = 2
  train.train_and_evaluate(digits_config, str(tmp_path))
  records = _records(str(tmp_path))
  assert len(records) == 2 and all(np.isfinite(r['nmi']) for r in records)
  assert records[-1]['num_nonempty'] >= 5  # The Mahalanobis costs still give a spread.
  precision = np.asarray(load_trained(str(tmp_path)).state.params['precision'])
  initial = np.eye(8) / digits_config.sigma
  assert precision.shape == (10, 8, 8) and np.abs(precision - initial).max() > 1e-4
  np.testing.assert_allclose(precision, precision.transpose(0, 2, 1), atol=1e-6)
