"""Combination assignment: the exact sequential definition and an exact parallel-rounds version.

Definition: repeatedly take the unassigned (point i, cluster k) pair with the smallest
`costs[i, k] + log(n_k + 1)`, n_k the points given to k so far in this call (from `counts`), ties to
the smallest i, then the smallest k; assign it; increment n_k.

Parallel rounds (exact). With the penalties p_k = log(n_k + 1) of the round's start, cluster k commits
the longest prefix j_0, j_1, ... of its unassigned points in (cost, index) order such that every
member's key (costs[j_r, k] + log(n_k + 1 + r), k) is lexicographically below the best key
(costs[j_r, k'] + p_k', k') over the other clusters k'. Why this is the sequential outcome: penalties
only rise, so (j_r, k') is never worth less than its round-start key; cluster k receives points in its
(cost, index) order, so until it takes j_r it holds at most n_k + r points and (j_r, k) stays strictly
ahead of every (j_r, k') — j_r can only go to k. Conversely a step of the sequential process that is no
commit is unaffected by applying all commits first (it only ever involves clusters with no commits
pending, and commits only remove competitors and raise penalties). The global-minimum pair always
qualifies (and is committed in any case), so every round commits at least one pair; ties are exact
because the comparison is lexicographic in the cluster index, each cluster's order is a stable sort by
point index, and a prefix stops where float rounding could reorder two points. Each cluster's order
is sorted once per call; a round masks the points assigned so far and costs O(B K).
"""

import jax
import jax.numpy as jnp

IMPLS = ('parallel', 'sequential')


def _check(costs, counts, impl):
  if impl not in IMPLS:
    raise ValueError(f'combination_assign: impl must be one of {IMPLS}, got {impl!r}')
  if jnp.ndim(costs) != 2:
    raise ValueError(f'combination_assign: costs must be a (batch, clusters) float array, got '
                     f'shape {jnp.shape(costs)}')
  if not jnp.issubdtype(jnp.result_type(costs), jnp.floating):
    raise TypeError(f'combination_assign: costs must be floating point, got '
                    f'{jnp.result_type(costs)}')
  num_clusters = jnp.shape(costs)[1]
  if counts is None:
    return jnp.zeros((num_clusters,), jnp.int32)
  if jnp.shape(counts) != (num_clusters,):
    raise ValueError(f'combination_assign: counts must have shape ({num_clusters},), got '
                     f'{jnp.shape(counts)}')
  return jnp.asarray(counts, jnp.int32)


def _penalty(n, dtype):
  """log(n + 1), computed identically by both implementations."""
  return jnp.log1p(n.astype(dtype))


def _sequential(costs, counts):
  batch, num_clusters = costs.shape

  def body(_, carry):
    labels, n = carry
    values = jnp.where((labels < 0)[:, None], costs + _penalty(n, costs.dtype)[None], jnp.inf)
    flat = jnp.argmin(values.ravel())  # Row-major: smallest i, then smallest k.
    i, k = flat // num_clusters, (flat % num_clusters).astype(jnp.int32)
    return labels.at[i].set(k), n.at[k].add(1)

  labels = jnp.full((batch,), -1, jnp.int32)
  labels, counts = jax.lax.fori_loop(0, batch, body, (labels, counts))
  return labels, counts, jnp.asarray(batch, jnp.int32)


def _first_min(values, axis):
  """(min, index of its first occurrence) along `axis`: cheaper on XLA:CPU than argmin."""
  low = jnp.min(values, axis=axis, keepdims=True)
  return jnp.squeeze(low, axis), jnp.argmax(values == low, axis=axis).astype(jnp.int32)


def _parallel(costs, counts):
  batch, num_clusters = costs.shape
  clusters = jnp.arange(num_clusters, dtype=jnp.int32)
  ranks = jnp.arange(batch, dtype=jnp.int32)[:, None]
  # Each cluster's points in (cost, index) order: sorted once per call; rounds mask assigned points.
  order = jnp.argsort(costs, axis=0, stable=True)
  to_point = jnp.zeros_like(order).at[order, clusters[None, :]].set(
      jnp.broadcast_to(ranks, order.shape), unique_indices=True)
  sorted_costs = jnp.take_along_axis(costs, order, 0)
  starts = jnp.concatenate([jnp.ones((1, num_clusters), bool),
                            sorted_costs[1:] != sorted_costs[:-1]])
  # Position of the first point of larger cost after each position (batch: none).
  next_group = jax.lax.cummin(jnp.where(starts, ranks, batch), axis=0, reverse=True)
  next_group = jnp.concatenate([next_group[1:], jnp.full((1, num_clusters), batch)])
  inf_row = jnp.full((1, num_clusters), jnp.inf, costs.dtype)

  def one_round(labels, counts):
    free = labels < 0
    values = jnp.where(free[:, None], costs + _penalty(counts, costs.dtype)[None], jnp.inf)
    # Each point's best and second-best (value, cluster), lexicographically.
    best_v, best_k = _first_min(values, 1)
    second_v, second_k = _first_min(
        jnp.where(clusters[None, :] == best_k[:, None], jnp.inf, values), 1)
    # Cluster k's r-th free point in its order would be taken at penalty log(n_k + 1 + r) and
    # must beat its best rival cluster.
    free_sorted = free[order]
    penalty = _penalty(counts[None, :] + jnp.cumsum(free_sorted, 0, dtype=jnp.int32) - 1,
                       costs.dtype)
    candidate = sorted_costs + penalty
    own_best = best_k[order] == clusters[None, :]
    rival_v = jnp.where(own_best, second_v[order], best_v[order])
    rival_k = jnp.where(own_best, second_k[order], best_k[order])
    wins = (candidate < rival_v) | ((candidate == rival_v) & (clusters[None, :] < rival_k))
    # Rounding can make cost + penalty equal for unequal costs, and the definition then prefers the
    # smaller point index: a point is only certain to be next when the first free point of larger
    # cost after it stays strictly above it once the penalty is added.
    free_costs = jnp.where(free_sorted, sorted_costs, jnp.inf)
    next_free = jnp.concatenate([jax.lax.cummin(free_costs, axis=0, reverse=True), inf_row])
    separated = jnp.take_along_axis(next_free, next_group, 0) + penalty > candidate
    ok = wins & separated | ~free_sorted
    first_fail = jnp.where(jnp.all(ok, axis=0), batch, jnp.argmin(ok, axis=0))
    commit = (ranks < first_fail[None, :]) & free_sorted
    by_point = jnp.take_along_axis(commit, to_point, 0)
    # The globally cheapest pair is always the definition's next step: commit it in any case.
    _, i = _first_min(best_v, 0)
    by_point |= (ranks == i) & (clusters[None, :] == best_k[i])
    labels = jnp.where(jnp.any(by_point, axis=1), jnp.argmax(by_point, axis=1).astype(jnp.int32),
                       labels)
    return labels, counts + by_point.sum(0, dtype=jnp.int32)

  def cond(carry):
    labels, _, rounds = carry
    return jnp.any(labels < 0) & (rounds < batch)

  def body(carry):
    labels, counts, rounds = carry
    return (*one_round(labels, counts), rounds + 1)

  labels = jnp.full((batch,), -1, jnp.int32)
  return jax.lax.while_loop(cond, body, (labels, counts, jnp.zeros((), jnp.int32)))


def combination_assign_with_rounds(costs, counts=None, *, impl='parallel'):
  """`combination_assign` plus the number of rounds (sequential: B steps) it took."""
  counts = _check(costs, counts, impl)
  costs = jnp.asarray(costs)
  labels, counts, rounds = (_parallel if impl == 'parallel' else _sequential)(costs, counts)
  # Non-finite costs can leave points unassigned; the train step's guard reports them.
  return jnp.maximum(labels, 0), counts, rounds


def combination_assign(costs, counts=None, *, impl='parallel'):
  """Labels (B,) int32 and final counts (K,) int32 of combination assignment of a (B, K) table."""
  labels, counts, _ = combination_assign_with_rounds(costs, counts, impl=impl)
  return labels, counts


def argmin_assign(costs, counts=None):
  """Point-wise argmin labels (no regularisation), with the counts updated the same way."""
  counts = _check(costs, counts, 'parallel')
  labels = jnp.argmin(costs, axis=1).astype(jnp.int32)
  return labels, counts + jnp.bincount(labels, length=jnp.shape(costs)[1]).astype(jnp.int32)
