"""Combination assignment: the exact sequential definition and an exact parallel-rounds version.

Definition: repeatedly take the unassigned (point i, cluster k) pair with the smallest
`costs[i, k] + log(n_k + 1)`, n_k the points given to k so far in this call (from `counts`), ties to
the smallest i, then the smallest k; assign it; increment n_k. Writing v(i, k) for that value at the
current counts, each step takes the lexicographically smallest (v, i, k); values only ever rise
(float addition is monotone in each argument).

Parallel rounds (exact). A round commits pairs that the definition provably takes from the current
state, then the next round starts from the new counts. Committing, for some clusters, the first few
points the definition would give each of them changes nothing else: a later step of the definition
involves a cluster with no commit pending, so its value is unchanged, while every other value can
only have risen -- the same pair stays the smallest, with the same tie-break. Two rules find them:

1. Cluster prefixes. When cluster k wins, its pair is the smallest of its column, so k receives its
   points in (cost, index) order, and its r-th free point j_r in that order is its r-th intake, at
   V_r = costs[j_r, k] + log(n_k + 1 + r), provided that
   (a) (V_r, k) is lexicographically below (v(j_r, k'), k') at the round's start for every other
       cluster k'. Values never fall, so until j_r is taken k holds at most n_k + r points and
       (j_r, k) stays below every (j_r, k'): strictly if k' < k, possibly tied if k' > k, where the
       tie-break picks k. Commits of other clusters only raise their values, which widens the
       margin, and no point can pass (a) for two clusters; and
   (b) the next larger free cost of k's whole column stays strictly above V_r at the same
       penalty: rounding can make cost + penalty equal for unequal costs, and the definition would
       then prefer the smaller index. Below the blocker's cost that next cost is the next point in
       k's run or the blocker itself; at the blocker's cost it is the smallest larger free cost of
       the column, whichever cluster its point prefers.
   Each cluster commits its longest prefix passing both. Only a point's best cluster can pass (a),
   so the prefix consists of points preferring k and ends, at the latest, at k's blocker: its first
   free point in that order preferring another cluster. Ranking the points before their blockers
   by (best cluster, cost, index) ranks every prefix at once.
2. Queue runs. Order the free points by (best value, index): the first is the definition's next
   step, and so is each following one while its best pair is untouched by the clusters the run has
   taken, and those clusters, one point heavier, now value it strictly above its best (or equal
   from a larger cluster index). Two runs are checked: points that all attain their best value at
   the same set T of clusters, the r-th taking the r-th cluster of T (an all-equal table commits
   min(B, K) pairs per round this way; rule 1 commits one there, as every cluster's first choice is
   the same point), and points whose best clusters are all distinct. Every round commits at least
   the global minimum pair.

Hand-over. Any state exact rounds reach is the definition's state, so the sequential loop can
finish from it. Once the rounds have committed fewer pairs a round on average than a round costs in
sequential steps (`handover_rate`), or a round commits none (as on some tables with infinite costs),
the loop takes the points left. The rounds before it then cost at most what the sequential loop
would have for the pairs they committed, so no table costs much more than twice the better of the
two. The worst case for the rounds alone, a staircase C[i, k] = i a + k b, took B rounds.

Non-finite costs: NaN is taken as +inf by both impls; infinite values compare as equal to each other,
so among them the smallest point, then cluster, goes first. The train step's guard still stops a run
whose costs are not finite.

A round costs four passes over the B x K table (best, second best, blockers, the value table they
share), a top_k and a one-key integer sort of the points before their blockers (at most
max(2K, 128) in most rounds), and a top_k of min(B, K); the index of a blocker and the rival
cluster of a tie are computed only in rounds that have such ties. Rounds gather and sort, never scatter: XLA's
SPMD pass mis-partitioned scatters into point-sharded arrays.
"""

import functools

import jax
import jax.numpy as jnp

def handover_rate(batch: int, num_clusters: int, backend: str) -> float:
  """A round's cost in sequential steps, below which average commit the rounds hand over.

  On XLA:CPU a round costs about 0.15 ms + 3.6 ns per table entry and a step 3 us + 4.8 ns per
  entry (2-core x86-64, 2026-12-03: 23 steps at 128 x 10, 6 at 1024 x 10, 1.3 at 1024 x 100, 0.8 at
  4096 x 100); elsewhere unmeasured, 4.
  """
  if backend != 'cpu':
    return 4.0
  entries = batch * num_clusters
  return max(1.0, (0.15 + 3.6e-6 * entries) / (0.003 + 4.8e-6 * entries))


def _check(costs, counts, name):
  """The costs as an array and the starting counts as int32, or a one-line error."""
  if jnp.ndim(costs) != 2 or 0 in jnp.shape(costs):
    raise ValueError(f'{name}: costs must be a (batch, clusters) float array, got shape '
                     f'{jnp.shape(costs)}')
  if not jnp.issubdtype(jnp.result_type(costs), jnp.floating):
    raise TypeError(f'{name}: costs must be a (batch, clusters) floating point array, got dtype '
                    f'{jnp.result_type(costs)}')
  num_clusters = jnp.shape(costs)[1]
  if counts is None:
    return jnp.asarray(costs), jnp.zeros((num_clusters,), jnp.int32)
  if jnp.shape(counts) != (num_clusters,):
    raise ValueError(f'{name}: counts must have shape ({num_clusters},), got '
                     f'{jnp.shape(counts)}')
  return jnp.asarray(costs), jnp.asarray(counts, jnp.int32)


def _penalty(n, dtype):
  """log(n + 1), computed the same way everywhere so both implementations see the same floats."""
  return jnp.log1p(n.astype(dtype))


def _first(hit, axis):
  """Index of the first True along `axis` (the last index if none).

  A float min over an iota: XLA:CPU reduces it faster than argmax, exactly up to 2**24 entries.
  """
  size = hit.shape[axis]
  if size > 2**24:
    return jnp.argmax(hit, axis=axis).astype(jnp.int32)
  iota = jax.lax.broadcasted_iota(jnp.float32, hit.shape, axis)
  return jnp.minimum(jnp.min(jnp.where(hit, iota, size), axis=axis), size - 1).astype(jnp.int32)


def _smallest(values, size):
  """Indices of the `size` smallest values in (value, index) order; -0.0 and 0.0 tie.

  top_k has a fast XLA:CPU path for float32 only, so other dtypes are first replaced by their exact
  ranks (an integer sort of their order-preserving bit patterns), which float32 holds exactly.
  """
  values = jnp.where(values == 0, 0, values)
  if values.dtype != jnp.float32:
    bits = jax.lax.bitcast_convert_type(values, jnp.dtype(f'int{8 * values.dtype.itemsize}'))
    key = jnp.where(bits < 0, bits ^ jnp.iinfo(bits.dtype).max, bits)
    values = jnp.searchsorted(jnp.sort(key), key).astype(jnp.float32)
  return jax.lax.top_k(-values, size)[1]


def _sequential(costs, counts, labels=None):
  """The definition, one pair per step, from `labels` (-1: free) on; the value table is kept
  cluster-major and updated. (labels, counts, steps)."""
  batch, _ = costs.shape
  by_cluster = costs.T
  labels = jnp.full((batch,), -1, jnp.int32) if labels is None else labels

  def body(_, carry):
    labels, n, values = carry
    hit = values == jnp.nanmin(values)
    i = jnp.argmax(jnp.any(hit, axis=0))  # Smallest point, then smallest cluster.
    k = jnp.argmax(hit[:, i]).astype(jnp.int32)
    labels, n = labels.at[i].set(k), n.at[k].add(1)
    values = values.at[:, i].set(jnp.nan)  # Taken: never equal to the minimum of the free values.
    row = jnp.where(labels < 0, by_cluster[k] + _penalty(n[k], costs.dtype), jnp.nan)
    return labels, n, jax.lax.dynamic_update_slice(values, row[None], (k, jnp.int32(0)))

  values = jnp.where(labels[None, :] < 0, by_cluster + _penalty(counts, costs.dtype)[:, None],
                     jnp.nan)
  steps = jnp.sum(labels < 0, dtype=jnp.int32)
  labels, counts, _ = jax.lax.fori_loop(0, steps, body, (labels, counts, values))
  return labels, counts, steps


def _parallel(costs, counts, shortcuts, handover_rate):
  """Rounds of rules 1 and 2, then the sequential loop for the points left when the rounds have
  committed fewer than `handover_rate` pairs a round on average: (labels, counts, rounds plus
  sequential steps).

  With `shortcuts`, work that only tied tables or crowded rounds need runs under lax.cond, in just
  the rounds that need it: a saving on XLA:CPU. Without, it runs in every round, giving the same
  labels: XLA:GPU's conditional thunk copies its predicate to the host and waits for it.
  """
  batch, num_clusters = costs.shape
  if batch > 2**24 or batch * (num_clusters + 1) >= 2**31:  # Ranks in float32, keys in int32.
    raise ValueError(f'combination_assign: impl="parallel" takes at most 2**24 points and B x (K + '
                     f'1) below 2**31, got costs of shape {costs.shape}: use impl="sequential"')
  head = min(batch, num_clusters)  # A tie run gives each cluster of T one point.
  few = min(batch, max(2 * num_clusters, 128))  # Points before their blockers, in most rounds.
  clusters = jnp.arange(num_clusters, dtype=jnp.int32)
  points = jnp.arange(batch, dtype=jnp.int32)

  def when(pred, needed, otherwise):
    """needed(), or with `shortcuts` where pred is false otherwise(), which then equals it."""
    return jax.lax.cond(pred, needed, otherwise) if shortcuts else needed()

  def cluster_prefixes(free, rival, counts, best_k, second_v):
    """Rule 1: labels or -1.

    Only a point's own best cluster can pass test (a), so cluster k's prefix is a run of the points
    preferring k, in (cost, index) order, that stops at its blocker: the first free point in that
    order that prefers another cluster. Ranking the points before their blockers by (best cluster,
    cost, index) ranks every prefix at once.
    """
    own = jnp.take_along_axis(costs, best_k[:, None], 1)[:, 0]
    other = jnp.where(free[:, None] & (clusters[None, :] != best_k[:, None]), costs, jnp.inf)
    block = jnp.min(other, 0)

    def blocker_ties():  # The blocker's index, and the next larger free cost of the whole column.
      column = jnp.where(free[:, None] & (costs > block[None, :]), costs, jnp.inf)
      return _first(other == block[None, :], 0), jnp.min(column, 0)

    block_i, above = when(jnp.any(free & (own == block[best_k])), blocker_ties,
                          lambda: (jnp.full((num_clusters,), batch, jnp.int32), block))
    before = free & ((own < block[best_k]) | ((own == block[best_k]) & (points < block_i[best_k])))
    key = jnp.where(before, own, jnp.inf)

    def stops(size):
      """Each cluster's first failing point as (cost, index), ranking the first `size` points."""
      slots = jnp.arange(size, dtype=jnp.int32)
      order = _smallest(key, size)  # The points before blockers first, in (cost, index) order.
      ranked = jnp.sort(jnp.where(before[order], best_k[order], num_clusters) * size + slots)
      s_group, s_point = ranked // size, order[ranked % size]
      s_own = own[s_point]
      k = jnp.minimum(s_group, num_clusters - 1)
      start = jnp.searchsorted(s_group, jnp.arange(num_clusters + 1, dtype=jnp.int32))
      penalty = _penalty(counts[k] + slots - start[k], costs.dtype)
      candidate = s_own + penalty
      rival_v = second_v[s_point]
      tie = (candidate == rival_v) & (s_group < num_clusters)

      def tie_break():  # k wins a tie if it comes before the rival cluster.
        return k < _first(rival == second_v[:, None], 1)[s_point]

      wins = (candidate < rival_v) | (tie & when(jnp.any(tie), tie_break,
                                                 lambda: jnp.zeros((size,), bool)))
      # The next larger free cost of the cluster: in the run, or among the points preferring others.
      change = jnp.concatenate([s_own[1:] != s_own[:-1], jnp.ones((1,), bool)])
      run_end = jax.lax.cummin(jnp.where(change, slots, size), reverse=True)
      nxt = jnp.minimum(run_end + 1, size - 1)
      in_run = jnp.where((run_end < size - 1) & (s_group[nxt] == s_group), s_own[nxt], jnp.inf)
      next_cost = jnp.minimum(in_run, jnp.where(block[k] > s_own, block[k], above[k]))
      ok = wins & (next_cost + penalty > candidate) & (s_group < num_clusters)
      # Each cluster commits its points before its first failure, in (cost, index) order.
      first_bad = jax.lax.cummin(jnp.where(ok, size, slots), reverse=True)
      fail = jnp.minimum(first_bad[jnp.minimum(start[:-1], size - 1)], size - 1)
      none = ~(s_group[fail] == clusters) | ok[fail]
      return jnp.where(none, jnp.inf, s_own[fail]), jnp.where(none, batch, s_point[fail])

    # Rank `few` points when that covers them all: top_k of B costs a full sort.
    stop_c, stop_i = (when(jnp.sum(before) > few, lambda: stops(batch), lambda: stops(few))
                      if few < batch else stops(batch))
    stop_c, stop_i = stop_c[best_k], stop_i[best_k]
    commit = before & ((own < stop_c) | ((own == stop_c) & (points < stop_i)))
    return jnp.where(commit, best_k, -1).astype(jnp.int32)

  def queue_runs(free, values, counts, best_v, best_k):
    """Rule 2 on the first free points in (best value, index) order: labels or -1."""
    queue = _smallest(best_v, head)  # Assigned points (inf) last.
    b = best_v[queue][:, None]
    raised = costs[queue] + _penalty(counts + 1, costs.dtype)[None, :]
    turn = jnp.arange(head)[:, None]
    # Same tie set T as the first point: the r-th point takes the r-th cluster of T.
    tied = values[queue] == b
    first = tied[0]
    taken = first[None, :] & (jnp.cumsum(first, dtype=jnp.int32)[None, :] <= turn)
    ok = jnp.all(tied == first[None, :], 1) & jnp.all(~taken | (raised > b), 1) & free[queue]
    same = jnp.minimum(jnp.where(jnp.all(ok), head, jnp.argmin(ok)), first.sum())
    target = jnp.where(turn < same, jnp.nonzero(first, size=head, fill_value=0)[0][:, None], -1)
    # Distinct best clusters: the r-th point takes its own best cluster.
    k = best_k[queue][:, None]
    claim = jnp.min(jnp.where(clusters[None, :] == k, turn, head), 0)  # First turn wanting k.
    taken = claim[None, :] < turn
    after = (raised > b) | ((raised == b) & (clusters[None, :] > k))
    ok = (claim[k[:, 0]] == turn[:, 0]) & jnp.all(~taken | after, 1) & free[queue]
    distinct = jnp.where(jnp.all(ok), head, jnp.argmin(ok))
    queue, target = jax.lax.sort((queue, jnp.where(turn < distinct, k, target)[:, 0]), num_keys=1)
    at = jnp.minimum(jnp.searchsorted(queue, points), head - 1)
    return jnp.where(queue[at] == points, target[at], -1).astype(jnp.int32)

  def cond(carry):
    labels, _, rounds, committed, last = carry  # A round that commits nothing hands over too.
    return jnp.any(labels < 0) & (last > 0) & (committed >= handover_rate * rounds)

  def body(carry):
    labels, counts, rounds, committed, _ = carry
    free = labels < 0
    values = jnp.where(free[:, None], costs + _penalty(counts, costs.dtype)[None], jnp.inf)
    best_v = jnp.min(values, 1)
    best_k = _first(values == best_v[:, None], 1)
    rival = jnp.where(clusters[None, :] == best_k[:, None], jnp.inf, values)  # Best masked out.
    second_v = jnp.min(rival, 1)
    new = jnp.maximum(cluster_prefixes(free, rival, counts, best_k, second_v),
                      queue_runs(free, values, counts, best_v, best_k))  # Equal where both set.
    taken = jnp.bincount(jnp.where(new < 0, num_clusters, new),
                         length=num_clusters + 1).astype(jnp.int32)
    return (jnp.where(new < 0, labels, new), counts + taken[:-1], rounds + 1,
            committed + batch - taken[-1], batch - taken[-1])

  labels = jnp.full((batch,), -1, jnp.int32)
  zero = jnp.zeros((), jnp.int32)
  labels, counts, rounds, _, _ = jax.lax.while_loop(cond, body,
                                                    (labels, counts, zero, zero, zero + 1))
  labels, counts, steps = _sequential(costs, counts, labels)
  return labels, counts, rounds + steps


def _parallel_here(costs, counts):
  backend = jax.default_backend()
  return _parallel(costs, counts, backend == 'cpu', handover_rate(*costs.shape, backend))


# Implementations by name (config.assign_impl): `(costs, counts) -> (labels, counts, iterations)`.
IMPLS = {'parallel': _parallel_here, 'sequential': _sequential}


@functools.partial(jax.jit, static_argnames=('impl',))
def combination_assign_with_rounds(costs, counts=None, *, impl='parallel'):
  """`combination_assign` plus its loop's iterations: the parallel rounds plus the sequential steps
  after a hand-over (impl='sequential': B steps)."""
  if impl not in IMPLS:
    raise ValueError(f'combination_assign: impl must be one of {", ".join(IMPLS)}, got {impl!r}')
  costs, counts = _check(costs, counts, 'combination_assign')
  costs = jnp.where(jnp.isnan(costs), jnp.inf, costs)  # NaN is taken as +inf, by both impls.
  return IMPLS[impl](costs, counts)


def combination_assign(costs, counts=None, *, impl='parallel'):
  """Labels (B,) int32 and final counts (K,) int32 of combination assignment of a (B, K) table."""
  labels, counts, _ = combination_assign_with_rounds(costs, counts, impl=impl)
  return labels, counts


@jax.jit
def argmin_assign(costs, counts=None):
  """Point-wise argmin labels (no regularisation), with the counts updated the same way."""
  costs, counts = _check(costs, counts, 'argmin_assign')
  labels = jnp.argmin(costs, axis=1).astype(jnp.int32)
  return labels, counts + jnp.bincount(labels, length=costs.shape[1]).astype(jnp.int32)
