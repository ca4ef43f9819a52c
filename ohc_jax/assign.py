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
point index, and a prefix stops where float rounding could reorder two points (see `_round`).
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


def _round(costs, labels, counts):
  """One parallel round: every cluster commits its provably-sequential prefix."""
  batch, num_clusters = costs.shape
  clusters = jnp.arange(num_clusters, dtype=jnp.int32)
  ranks = jnp.arange(batch, dtype=jnp.int32)[:, None]
  free = labels < 0
  masked = jnp.where(free[:, None], costs, jnp.inf)
  values = masked + _penalty(counts, costs.dtype)[None]
  # Each point's best and second-best (value, cluster), lexicographically.
  best_k = jnp.argmin(values, axis=1).astype(jnp.int32)
  best_v = jnp.take_along_axis(values, best_k[:, None], 1)[:, 0]
  rest = values.at[jnp.arange(batch), best_k].set(jnp.inf)
  second_k = jnp.argmin(rest, axis=1).astype(jnp.int32)
  second_v = jnp.take_along_axis(rest, second_k[:, None], 1)[:, 0]
  # Each cluster's free points in (cost, index) order, assigned points last.
  order = jnp.argsort(masked, axis=0, stable=True)
  sorted_costs = jnp.take_along_axis(masked, order, 0)
  penalty = _penalty(counts[None, :] + ranks, costs.dtype)
  candidate = sorted_costs + penalty
  own_best = best_k[order] == clusters[None, :]
  rival_v = jnp.where(own_best, second_v[order], best_v[order])
  rival_k = jnp.where(own_best, second_k[order], best_k[order])
  wins = (candidate < rival_v) | ((candidate == rival_v) & (clusters[None, :] < rival_k))
  # Rounding can make cost + penalty equal for unequal costs, and the definition then prefers the
  # smaller point index: j_r is only certain to be next when the first larger cost after it stays
  # strictly above it once the penalty is added.
  starts = jnp.concatenate([jnp.ones((1, num_clusters), bool),
                            sorted_costs[1:] != sorted_costs[:-1]])
  next_start = jax.lax.cummin(jnp.where(starts, ranks, batch), axis=0, reverse=True)
  next_start = jnp.concatenate([next_start[1:], jnp.full((1, num_clusters), batch)])
  next_cost = jnp.take_along_axis(sorted_costs, jnp.minimum(next_start, batch - 1), 0)
  separated = (next_start >= batch) | (next_cost + penalty > candidate)
  commit = jnp.cumprod(wins & separated & free[order], axis=0).astype(bool)
  # Back from each cluster's order to point order (a gather, not a scatter: scatters into a table
  # sharded over points were mis-partitioned by XLA's SPMD pass).
  by_point = jnp.take_along_axis(commit, jnp.argsort(order, axis=0), 0)
  # The globally cheapest pair is always the definition's next step: commit it in any case.
  flat = jnp.argmin(values.ravel())
  by_point |= (ranks == flat // num_clusters) & (clusters[None, :] == flat % num_clusters)
  claimed = jnp.any(by_point, axis=1)
  labels = jnp.where(claimed, jnp.argmax(by_point, axis=1).astype(jnp.int32), labels)
  return labels, counts + by_point.sum(0, dtype=jnp.int32)


def _parallel(costs, counts):
  batch = costs.shape[0]

  def cond(carry):
    labels, _, rounds = carry
    return jnp.any(labels < 0) & (rounds < batch)

  def body(carry):
    labels, counts, rounds = carry
    labels, counts = _round(costs, labels, counts)
    return labels, counts, rounds + 1

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
