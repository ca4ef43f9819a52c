"""Imbalanced data: keep-probabilities, seeded sampling, prior matching, an imbalanced run."""

import numpy as np
import pytest

from ohc_jax import configuration, imbalance, train
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
    matched = np.exp(imbalance.matched_log_prior(prior, clusters, labels, how)) / 3
    np.testing.assert_allclose(matched, [0.3, 0.2, 0.5], rtol=1e-6)


@pytest.mark.slow
def test_imbalanced_run_uses_the_prior(digits_config, tmp_path):
  digits_config.update(imbalance=3, num_epochs=2, plots_every_epochs=0)
  results = train.train_and_evaluate(digits_config, str(tmp_path))
  assert results['num_train'] == results['num_eval'] < 1000  # ~55% of the 1,797 digits kept.
  final = results['final']
  assert sum(final['hard_sizes']) == results['num_eval'] and np.isfinite(final['kl_star'])
  kept = np.bincount(train.input_pipeline.load(digits_config).train.labels, minlength=10)
  assert kept[0] > 2 * kept[9]  # Class 0 kept whole, class 9 with probability 0.1.


def test_bad_imbalance_mode(digits_config):
  digits_config.imbalance = 4
  with pytest.raises(UsageError, match='--config.imbalance'):
    configuration.validate(digits_config)
