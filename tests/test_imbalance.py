"""Imbalanced data: keep-probabilities, seeded sampling, prior matching, an imbalanced run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ohc_jax import configuration, sharding
from ohc_jax.core import imbalance, metrics
from ohc_jax.run import train
from ohc_jax.errors import UsageError


def test_keep_probabilities_match_the_reference_formulas():
  np.testing.assert_allclose(imbalance.keep_probabilities(1, 10),
                             np.concatenate([np.ones(5), 1 - 0.2 * np.linspace(0, 1, 5)]))
  np.testing.assert_allclose(imbalance.keep_probabilities(1, 5),
                             [1, 1, 1, 1, 0.8])
  np.testing.assert_allclose(imbalance.keep_probabilities(2, 10)[[0, -1]], [1, 1 - 0.5 * 0.9])
  np.testing.assert_allclose(imbalance.keep_probabilities(3, 4), [1, 0.75, 0.5, 0.25])


@pytest.mark.parametrize('mode', [1, 2, 3])
def test_sampling_proportions_and_seed(mode):
  labels = np.random.default_rng(0).integers(0, 10, 200_000)
  keep = imbalance.keep_probabilities(mode, 10)
  rows = imbalance.subsample(labels, keep, seed=3)
  kept = np.bincount(labels[rows], minlength=10) / np.bincount(labels, minlength=10)
  np.testing.assert_allclose(kept, keep, atol=0.01)
  np.testing.assert_array_equal(rows, imbalance.subsample(labels, keep, seed=3))
  assert not np.array_equal(rows, imbalance.subsample(labels, keep, seed=4))


def test_prior_matching():
  prior = np.array([0.5, 0.3, 0.2])
  labels = np.array([0] * 5 + [1] * 3 + [2] * 2)
  clusters = np.array([2] * 5 + [0] * 3 + [1] * 2)  # Cluster 2 holds class 0, and so on.
  for how in ('hungarian', 'size'):
    table = metrics.contingency(labels, clusters, 3)
    matched = np.exp(imbalance.matched_log_prior(prior, table, how)) / 3
    np.testing.assert_allclose(matched, [0.3, 0.2, 0.5], rtol=1e-6)
  # 'identity' (the reference's code) gives cluster k entry k, with no clusters or labels needed.
  identity = np.exp(imbalance.matched_log_prior(prior, None, 'identity')) / 3
  np.testing.assert_allclose(identity, prior, rtol=1e-6)


def test_the_default_setup_is_the_references_and_label_free():
  config = configuration.base_config()
  assert (config.prior_matching, config.prior_scope) == ('identity', 'combination')


def _step_outputs(build, config, log_prior):
  """Training-step labels and evaluation clusters of one digits batch with `log_prior` set."""
  data, exp, state = build(config)
  state = state.replace(log_prior=jax.device_put(jnp.asarray(log_prior, jnp.float32),
                                                 sharding.replicated(exp.mesh)))
  batch = exp.to_global({'image': data.train.images[:256]})
  clusters = np.asarray(exp.eval_step(state, batch)['cluster'])
  return np.asarray(exp.train_step(state, batch)[1]['labels']), clusters


@pytest.mark.parametrize('scope', imbalance.SCOPES)
@pytest.mark.parametrize('method', ['combination', 'sinkhorn'])
def test_prior_scope(digits_config, scope, method, build):
  digits_config.update(method=method, prior_scope=scope)
  skewed = np.log(10 * np.array([0.55] + [0.05] * 9))
  uniform_labels, uniform_clusters = _step_outputs(build, digits_config, np.zeros(10))
  labels, clusters = _step_outputs(build, digits_config, skewed)
  if scope == 'combination' and method == 'sinkhorn':  # The reference's Sinkhorn ignores the prior.
    np.testing.assert_array_equal(labels, uniform_labels)
    np.testing.assert_array_equal(clusters, uniform_clusters)
  else:  # The prior reaches training and evaluation alike (Sinkhorn's also through its marginals),
    # so cluster 0, with 55% of the prior, gains points.
    assert np.sum(labels == 0) > np.sum(uniform_labels == 0) + 40
    assert np.sum(clusters == 0) > np.sum(uniform_clusters == 0)


@pytest.mark.slow
def test_imbalanced_run_uses_the_prior(digits_config, tmp_path):
  digits_config.update(imbalance=3, num_epochs=2, plots_every_epochs=0)
  results = train.train_and_evaluate(digits_config, str(tmp_path))
  assert results['num_train'] == results['num_eval'] < 1000  # ~55% of the 1,797 digits kept.
  final = results['final']
  assert sum(final['hard_sizes']) == results['num_eval'] and np.isfinite(final['kl_star'])
  kept = np.bincount(train.data_lib.load(digits_config).train.labels, minlength=10)
  assert kept[0] > 2 * kept[9]  # Class 0 kept whole, class 9 with probability 0.1.


@pytest.mark.parametrize('field', ['imbalance', 'prior_matching', 'prior_scope'])
def test_bad_imbalance_setting(digits_config, field):
  digits_config[field] = 4 if field == 'imbalance' else 'peek'
  with pytest.raises(UsageError, match=f'--config.{field}='):
    configuration.validate(digits_config)
