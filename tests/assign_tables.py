"""Adversarial cost tables for combination assignment, and the definition on the same floats.

The tables are built to hit what breaks exact parallel rounds: a few base values and their 1-3 ulp
neighbours, entries copied across rows, log-ties (a_i - log1p(r), which cost + penalty turns into
exact ties), tiny, subnormal and huge magnitudes, signed zeros and non-finite entries, in every float
dtype, with and without starting counts and a prior. `definition` takes the cheapest free pair step
by step, comparing exactly the floats the implementation compares: the values cost + log1p(n) are
computed by XLA in the table's dtype (so subnormals are flushed as XLA:CPU flushes them).
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

DTYPES = ('float32', 'float64', 'bfloat16', 'float16')
KINDS = ('ulps', 'copies', 'log_ties', 'small_ints', 'magnitudes', 'nonfinite', 'staircase')
SHAPES = ((1, 3), (2, 2), (3, 2), (4, 3), (6, 4), (9, 5), (16, 6), (33, 7))


def np_dtype(name):
  return np.dtype(getattr(ml_dtypes, name) if name == 'bfloat16' else name)


def _ulps(values, steps):
  """values moved by `steps` ulps (signed; up is toward +inf) in their own dtype, through their bit
  patterns (NumPy's nextafter has no 16-bit floats); infinities and NaN stay."""
  uint = np.dtype(f'uint{8 * values.dtype.itemsize}')
  sign = uint.type(1) << uint.type(8 * values.dtype.itemsize - 1)
  bits = values.view(uint)
  magnitude = (bits & ~sign).astype(np.int64)
  # A signed position on the line of floats: ..., -1 ulp, 0 (both zeros), +1 ulp, ...
  position = np.where((bits & sign) != 0, -magnitude, magnitude) + steps
  size = np.abs(position).astype(uint)
  moved = np.where(position < 0, size | sign, size).astype(uint).view(values.dtype)
  return np.where(np.isfinite(values.astype(np.float64)), moved, values)


def _bases(rng, count, dtype):
  """`count` base values of one magnitude drawn from tiny (subnormal) to huge."""
  finfo = ml_dtypes.finfo(dtype)
  scale = rng.choice([float(finfo.smallest_subnormal) * 4, float(finfo.tiny), 1e-3, 0.5, 1.0,
                      3.0, 100.0, 1e4, float(finfo.max) / 1e3])
  return (rng.choice([-1.0, 1.0], count) * rng.uniform(0, 2, count) * scale).astype(dtype)


def table(kind, rng, batch, num_clusters, dtype):
  """One adversarial table of `kind`, shape (batch, num_clusters), NumPy array of `dtype`."""
  dtype = np_dtype(dtype) if isinstance(dtype, str) else np.dtype(dtype)
  shape = (batch, num_clusters)
  if kind == 'ulps':
    base = _bases(rng, rng.integers(1, 4), dtype)
    c = base[rng.integers(0, len(base), shape)]
    return _ulps(c, rng.integers(-3, 4, shape) * (rng.random(shape) < 0.6))
  if kind == 'copies':
    c = table(rng.choice(['ulps', 'small_ints', 'log_ties']), rng, batch, num_clusters, dtype)
    rows = rng.integers(0, batch, batch)
    cols = rng.random(shape) < 0.5
    c = np.where(cols, c[rows], c)
    return _ulps(c, rng.integers(-1, 2, shape) * (rng.random(shape) < 0.2))
  if kind == 'log_ties':
    a = np.concatenate([_bases(rng, 1, dtype), np.array([0, 1, 2], dtype)])
    a = a[rng.integers(0, len(a), (batch, 1))]
    r = rng.integers(0, batch + 2, shape)
    with jax.enable_x64(dtype == np.float64):  # XLA's penalties, in the table's dtype.
      penalty = np.asarray(jnp.log1p(jnp.asarray(r).astype(dtype)))
    c = (a - penalty).astype(dtype)
    return _ulps(c, rng.integers(-1, 2, shape) * (rng.random(shape) < 0.3))
  if kind == 'small_ints':
    return (rng.integers(0, 4, shape) * rng.choice([0.5, 1.0])).astype(dtype)
  if kind == 'magnitudes':
    c = _bases(rng, batch * num_clusters, dtype).reshape(shape)
    return np.where(rng.random(shape) < 0.2, -c * 0, c).astype(dtype)  # Signed zeros too.
  if kind == 'nonfinite':
    c = table(rng.choice(['ulps', 'small_ints']), rng, batch, num_clusters, dtype)
    special = np.array([np.inf, -np.inf, np.nan], dtype)
    return np.where(rng.random(shape) < 0.25, special[rng.integers(0, 3, shape)], c)
  if kind == 'staircase':
    i, k = np.meshgrid(np.arange(batch), np.arange(num_clusters), indexing='ij')
    return (i * 1e-3 + k * 1e-2).astype(dtype)
  raise ValueError(kind)


def random_case(rng, kind=None, dtype=None, shape=None):
  """(costs, counts, kind, dtype): a table of a random kind and dtype, maybe with starting counts
  and a log prior subtracted from its columns."""
  kind = kind or rng.choice(KINDS)
  dtype = dtype or rng.choice(DTYPES)
  batch, num_clusters = shape or SHAPES[rng.integers(len(SHAPES))]
  costs = table(kind, rng, batch, num_clusters, dtype)
  if rng.random() < 0.3:
    prior = rng.dirichlet(np.ones(num_clusters))
    costs = (costs - np.log(num_clusters * prior).astype(costs.dtype)).astype(costs.dtype)
  counts = (rng.integers(0, 6, num_clusters) if rng.random() < 0.4
            else np.zeros(num_clusters, np.int64))
  return costs, counts.astype(np.int32), str(kind), str(dtype)


@jax.jit
def _values(costs, counts):
  """costs[i, k] + log1p(n_k), by XLA in the table's dtype."""
  return costs + jnp.log1p(counts.astype(costs.dtype))[None, :]


def definition(costs, counts=None):
  """The definition on the implementation's floats: (labels, counts).

  NaN costs count as +inf; among equal values (infinite ones included) the smallest point, then the
  smallest cluster, goes first.
  """
  costs = np.asarray(costs)
  batch, num_clusters = costs.shape
  n = np.zeros(num_clusters, np.int64) if counts is None else np.array(counts, np.int64)
  costs = jnp.asarray(np.where(np.isnan(costs), np.array(np.inf, costs.dtype), costs))
  labels = np.full(batch, -1, np.int64)
  for _ in range(batch):
    current = np.asarray(_values(costs, jnp.asarray(n, jnp.int32))).astype(np.float64)  # Exact.
    free = labels < 0
    hit = free[:, None] & (current == np.min(current[free]))
    i, k = divmod(int(np.argmax(hit)), num_clusters)  # Row-major: smallest i, then k.
    labels[i] = k
    n[k] += 1
  return labels, n
