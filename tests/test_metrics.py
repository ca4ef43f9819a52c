import numpy as np
import pytest

from ohc_jax import metrics


def test_accuracy_is_invariant_to_cluster_names():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 1000)
  perm = rng.permutation(5)
  assert metrics.cluster_accuracy(labels, perm[labels], 5) == 1.0
  noisy = perm[labels].copy()
  noisy[:100] = (noisy[:100] + 1) % 5
  assert metrics.cluster_accuracy(labels, noisy, 5) == pytest.approx(0.9)


def test_accuracy_with_more_clusters_than_classes():
  labels = np.array([0, 0, 1, 1])
  clusters = np.array([0, 2, 1, 1])
  assert metrics.cluster_accuracy(labels, clusters, 3) == 0.75


def test_kl_star():
  prior = np.full(4, 0.25)
  assert metrics.kl_star(np.array([5, 5, 5, 5]), prior) == pytest.approx(0.0)
  assert metrics.kl_star(np.array([20, 0, 0, 0]), prior) == pytest.approx(np.log(4))
  q = np.array([0.5, 0.5, 0, 0])
  assert metrics.kl_star(np.array([2, 2, 0, 0]), prior) == pytest.approx(np.sum(q[:2] * np.log(q[:2] / 0.25)))


def test_clustering_metrics_fields():
  labels = np.array([0, 0, 1, 1, 2, 2])
  clusters = np.array([1, 1, 0, 0, 0, 0])
  m = metrics.clustering_metrics(labels, clusters, np.array([2.5, 3.0, 0.5]), np.full(3, 1 / 3))
  assert m['num_nonempty'] == 2
  assert m['hard_sizes'] == [4, 2, 0]
  assert m['acc'] == pytest.approx(4 / 6)
  assert 0 < m['nmi'] < 1 and m['ari'] < 1
