import numpy as np
import pytest

from ohc_jax.core import metrics


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


def _accumulated(labels, clusters, soft, prior, batch):
  """The accumulator fed in padded batches, as evaluation feeds it."""
  acc = metrics.Accumulator(len(prior))
  for start in range(0, max(len(labels), 1), batch):
    valid = len(labels[start:start + batch])
    pad = lambda a: np.concatenate([a[start:start + batch], np.zeros((batch - valid,) + a.shape[1:],
                                                                      a.dtype)])
    acc.add(pad(labels), pad(clusters), pad(soft), valid)
  return acc.result(prior)


def _check_equal(labels, clusters, num_clusters, batch, seed=0):
  soft = np.random.default_rng(seed).dirichlet(np.ones(num_clusters), len(labels))
  prior = np.full(num_clusters, 1 / num_clusters)
  want = metrics.clustering_metrics(labels, clusters, soft.sum(0), prior)
  got = _accumulated(labels, clusters, soft, prior, batch)
  for key in ('nmi', 'ari'):
    assert got.pop(key) == pytest.approx(want.pop(key), abs=1e-12, rel=0), key
  np.testing.assert_equal(got, want)


@pytest.mark.parametrize('name, labels, clusters, k', [
    ('perfect', np.repeat(np.arange(4), 5), np.repeat([2, 0, 3, 1], 5), 4),
    ('one cluster', np.arange(20) % 3, np.zeros(20, int), 5),
    ('one class, many clusters', np.zeros(20, int), np.arange(20) % 4, 4),
    ('one class, one cluster', np.zeros(7, int), np.full(7, 2), 3),
    ('empty clusters', np.arange(30) % 3, (np.arange(30) % 3) * 3, 10),
    ('classes absent, not contiguous', np.array([7, 7, 2, 9, 2, 9, 7]),
     np.array([0, 1, 1, 2, 0, 2, 0]), 3),
    ('more classes than clusters', np.arange(40) % 8, np.arange(40) % 3, 3),
    ('a single point', np.array([4]), np.array([1]), 2),
])
def test_accumulated_metrics_equal_the_whole_set_ones(name, labels, clusters, k):
  for batch in (1, 3, 64):
    _check_equal(labels, clusters, k, batch)


@pytest.mark.slow
def test_accumulated_metrics_equal_the_whole_set_ones_on_random_inputs():
  from hypothesis import given, settings, strategies as st

  @settings(max_examples=200, deadline=None)
  @given(st.integers(1, 400), st.integers(1, 12), st.integers(1, 15), st.integers(1, 100),
         st.integers(0, 2**31))
  def check(n, k, c, batch, seed):
    rng = np.random.default_rng(seed)
    _check_equal(rng.integers(0, c, n), rng.integers(0, k, n), k, batch, seed)

  check()


def test_accumulated_metrics_of_a_large_set():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 10, 50_000)
  clusters = np.where(rng.random(50_000) < 0.7, labels, rng.integers(0, 10, 50_000))
  _check_equal(labels, clusters, 10, 4096)
