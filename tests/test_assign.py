"""combination_assign: parallel == sequential == a NumPy transcription of the definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ohc_jax.core import assign
import assign_tables
from assign_tables import definition


_parallel = jax.jit(lambda c, n: assign.combination_assign_with_rounds(c, n, impl='parallel'))
_sequential = jax.jit(lambda c, n: assign.combination_assign_with_rounds(c, n, impl='sequential'))


def assert_all_agree(costs, counts=None):
  expected_labels, expected_counts = definition(costs, counts)
  n = jnp.zeros(costs.shape[1], jnp.int32) if counts is None else jnp.asarray(counts, jnp.int32)
  for fn in (_parallel, _sequential):
    labels, out_counts, _ = fn(jnp.asarray(costs), n)
    np.testing.assert_array_equal(np.asarray(labels), expected_labels)
    np.testing.assert_array_equal(np.asarray(out_counts), expected_counts)


def table(kind, rng, batch, num_clusters, dtype=np.float32):
  shape = (batch, num_clusters)
  if kind == 'normal':
    return rng.normal(size=shape).astype(dtype)
  if kind == 'integer':
    return rng.integers(0, 4, shape).astype(dtype)
  if kind == 'equal':
    return np.full(shape, 1.5, dtype)
  if kind == 'huge':
    return (rng.normal(size=shape) * 1e6).astype(dtype)
  if kind == 'tiny':
    return (rng.normal(size=shape) * 1e-6).astype(dtype)
  if kind == 'blobs':
    z = rng.normal(size=(batch, 8)) + 3 * rng.normal(size=(num_clusters, 8))[
        rng.integers(0, num_clusters, batch)]
    mu = rng.normal(size=(num_clusters, 8))
    return (((z[:, None] - mu[None]) ** 2).sum(-1) / 10).astype(dtype)
  raise ValueError(kind)


@pytest.mark.parametrize('kind', ['normal', 'integer', 'equal', 'huge', 'tiny', 'blobs'])
@pytest.mark.parametrize('batch,num_clusters', [(1, 2), (7, 3), (256, 10), (512, 100)])
def test_matches_definition(kind, batch, num_clusters):
  assert_all_agree(table(kind, np.random.default_rng(batch + num_clusters), batch, num_clusters))


@pytest.mark.parametrize('kind', ['normal', 'integer'])
def test_starting_counts_and_prior(kind):
  rng = np.random.default_rng(1)
  costs = table(kind, rng, 200, 12)
  assert_all_agree(costs, rng.integers(0, 50, 12))
  prior = rng.dirichlet(np.ones(12))
  assert_all_agree((costs - np.log(12 * prior)[None]).astype(np.float32))


def test_float64():
  with jax.enable_x64(True):
    rng = np.random.default_rng(2)
    for kind in ('normal', 'integer', 'tiny'):
      assert_all_agree(table(kind, rng, 300, 20, np.float64))


@pytest.mark.slow
@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 2**31), kind=st.sampled_from(['normal', 'integer', 'equal', 'huge',
                                                          'tiny', 'blobs']),
       batch=st.sampled_from([1, 2, 5, 64, 300, 1024, 4096]),
       num_clusters=st.sampled_from([2, 3, 10, 100, 1000]), with_counts=st.booleans())
def test_property_parallel_equals_sequential(seed, kind, batch, num_clusters, with_counts):
  """B up to 4096 and K up to 1000 (B x K capped near 1e6; the NumPy loop only on small tables)."""
  if batch * num_clusters > 1_100_000:
    batch = 1024  # The sequential reference at 4096 x 1000 takes seconds per example.
  if batch * num_clusters > 300_000 and kind in ('integer', 'equal'):
    batch = 256  # Heavily tied tables take up to B rounds; keep the suite fast.
  rng = np.random.default_rng(seed)
  costs = jnp.asarray(table(kind, rng, batch, num_clusters))
  counts = jnp.asarray(rng.integers(0, 20, num_clusters) if with_counts
                       else np.zeros(num_clusters), jnp.int32)
  labels_p, counts_p, _ = _parallel(costs, counts)
  labels_s, counts_s, _ = _sequential(costs, counts)
  np.testing.assert_array_equal(np.asarray(labels_p), np.asarray(labels_s))
  np.testing.assert_array_equal(np.asarray(counts_p), np.asarray(counts_s))
  assert int(counts_p.sum()) == int(counts.sum()) + batch
  if batch * num_clusters <= 30_000:
    expected, _ = definition(np.asarray(costs), np.asarray(counts))
    np.testing.assert_array_equal(np.asarray(labels_p), expected)


def _points_before_blockers(costs):
  """How many points precede, in their best cluster's (cost, index) order, every point that prefers
  another cluster: the points rule 1 ranks in the first round."""
  best = costs.argmin(1)
  other = np.where(best[:, None] != np.arange(costs.shape[1])[None], costs, np.inf)
  return int(np.sum(costs[np.arange(len(costs)), best] < other.min(0)[best]))


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_many_points_before_their_blockers(dtype):
  """Rule 1 ranks up to max(2K, 128) points with a short top_k, and all B when more are before
  their blockers. Here all 600 are: 400 cheap points prefer cluster 0 by far, and 200 dearer ones
  prefer cluster 2 by a margin of 2, which the penalty overtakes after a few intakes, so cluster 2's
  prefix must stop although none of its points is among the 128 cheapest."""
  rng = np.random.default_rng(4)
  costs = np.full((600, 3), 100.0)
  costs[:400, 0] = rng.uniform(0, 1, 400)
  costs[400:, 2] = 5 + rng.uniform(0, 1, 200)
  costs[400:, :2] = costs[400:, 2:] + 2
  costs = costs.astype(dtype)
  assert _points_before_blockers(costs) == 600
  with jax.enable_x64(dtype == np.float64):
    assert_all_agree(costs)


@pytest.mark.parametrize('kind', ['normal', 'integer', 'equal', 'blobs'])
def test_without_shortcuts(kind):
  """Off the CPU the tie and crowded-round work runs every round instead of under lax.cond: the
  same labels, counts and rounds."""
  costs = jnp.asarray(table(kind, np.random.default_rng(5), 300, 10))
  counts = jnp.zeros(10, jnp.int32)
  plain = jax.jit(lambda c, n: assign._parallel(c, n, False, handover_rate=0))(costs, counts)
  short = jax.jit(lambda c, n: assign._parallel(c, n, True, handover_rate=0))(costs, counts)
  expected, expected_counts = definition(np.asarray(costs))
  np.testing.assert_array_equal(np.asarray(plain[0]), expected)
  np.testing.assert_array_equal(np.asarray(plain[1]), expected_counts)
  assert int(plain[2]) == int(short[2])


def test_signed_zeros_tie():
  """-0.0 and 0.0 are equal costs: the smaller index goes first, whatever the sign."""
  costs = np.zeros((64, 4), np.float32)
  costs[::3] = -0.0
  costs[1::5, 2] = -1.0
  for dtype in (np.float32, np.float64):
    with jax.enable_x64(dtype == np.float64):
      assert_all_agree(costs.astype(dtype))


_rounds_alone = jax.jit(lambda c, n: assign._parallel(c, n, True, handover_rate=0))


def test_round_count_on_realistic_tables():
  costs = jnp.asarray(table('blobs', np.random.default_rng(3), 1024, 100))
  _, _, rounds = _parallel(costs, jnp.zeros(100, jnp.int32))
  assert int(rounds) <= 1024 // 16  # Measured: 20-30 rounds, against 1024 sequential steps.
  costs = jnp.asarray(table('integer', np.random.default_rng(3), 256, 10))
  _, _, rounds = _rounds_alone(costs, jnp.zeros(10, jnp.int32))
  assert int(rounds) < 256  # Ties resolved lexicographically commit several pairs per round.


@pytest.mark.parametrize('kind', ['staircase', 'integer', 'blobs'])
def test_hand_over_after_any_round_gives_the_definition(kind):
  """The sequential loop finishes from any state the rounds reach: handing over after the first
  round (rate inf), at a moderate rate, or never (rate 0), the labels are the definition's."""
  rng = np.random.default_rng(6)  # The staircase commits one pair a round: the rounds alone take B.
  make = assign_tables.table if kind == 'staircase' else table
  costs = make(kind, rng, 256, 10, np.float32)
  expected, expected_counts = definition(costs)
  for rate in (float('inf'), 4.0, 0.0):
    fn = jax.jit(lambda c, n, rate=rate: assign._parallel(c, n, True, handover_rate=rate))
    labels, counts, iterations = fn(jnp.asarray(costs), jnp.zeros(10, jnp.int32))
    np.testing.assert_array_equal(np.asarray(labels), expected)
    np.testing.assert_array_equal(np.asarray(counts), expected_counts)
    if kind == 'staircase':
      assert int(iterations) == 256
  assert assign.handover_rate(256, 10, 'cpu') > 1 and assign.handover_rate(4096, 100, 'cpu') == 1


@pytest.mark.parametrize('batch,num_clusters', [(256, 10), (1024, 100), (100, 7)])
def test_all_equal_tables_take_about_b_over_k_rounds(batch, num_clusters):
  """Queue runs give each of the K tied clusters one point a round: ceil(B / K) + 1 rounds
  (measured 26, 11 and 15), where one pair a round would take B."""
  _, counts, rounds = _rounds_alone(jnp.full((batch, num_clusters), 1.5),
                                    jnp.zeros(num_clusters, jnp.int32))
  assert int(rounds) <= -(-batch // num_clusters) + 1
  assert int(counts.max()) - int(counts.min()) <= 1


def test_inside_jit_and_grad_safe():
  costs = jnp.asarray(table('normal', np.random.default_rng(4), 32, 4))

  def loss(c):
    labels, _ = assign.combination_assign(jax.lax.stop_gradient(c))
    return jnp.take_along_axis(c, labels[:, None], 1).mean()

  grad = jax.jit(jax.grad(loss))(costs)
  assert float(grad.sum()) == pytest.approx(1.0)


def test_argmin_assign():
  costs = jnp.asarray([[0.0, 1.0], [0.5, 0.2], [0.1, 0.3]])
  labels, counts = assign.argmin_assign(costs, jnp.asarray([1, 0]))
  assert labels.tolist() == [0, 1, 0] and counts.tolist() == [3, 1]


@pytest.mark.parametrize('costs,kwargs,error,match', [
    (jnp.zeros(3), {}, ValueError, r'\(batch, clusters\)'),
    (jnp.zeros((3, 2), jnp.int32), {}, TypeError, 'floating'),
    (jnp.zeros((3, 2)), {'impl': 'fast'}, ValueError, 'impl'),
    (jnp.zeros((3, 2)), {'counts': jnp.zeros(3, jnp.int32)}, ValueError, 'counts'),
])
def test_bad_input(costs, kwargs, error, match):
  with pytest.raises(error, match=match):
    assign.combination_assign(costs, **kwargs)


def test_parallel_size_limit_is_a_clear_error():
  """Ranks are held in float32 and sort keys in int32: larger tables are refused at trace time."""
  too_big = jax.ShapeDtypeStruct((2**16, 2**15), jnp.float32)  # Traced only, never allocated.
  with pytest.raises(ValueError, match='impl="sequential"'):
    jax.eval_shape(assign.combination_assign, too_big)
  labels = jax.eval_shape(lambda c: assign.combination_assign(c, impl='sequential'), too_big)[0]
  assert labels.shape == (2**16,)
