"""A search for near-tie tables where the parallel rounds leave the definition.

CI runs a bounded search; the offline one is the same test with more tables:

  OHC_ASSIGN_SEARCH=100000 python -m pytest tests/test_assign_search.py -q -s

Each table is checked four ways against the definition on the same floats: impl='parallel' (rounds
with the hand-over to the sequential loop), impl='sequential', and the rounds alone (no hand-over),
with and without their lax.cond shortcuts, so that a wrong commit cannot hide behind the hand-over.
"""

import collections
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import assign_tables
from ohc_jax.core import assign


def _rounds_only(shortcuts):
  def fn(costs, counts):
    costs = jnp.where(jnp.isnan(costs), jnp.inf, costs)
    return assign._parallel(costs, counts, shortcuts, handover_rate=0)
  return jax.jit(fn)


IMPLS = {
    'parallel': jax.jit(lambda c, n: assign.combination_assign_with_rounds(c, n, impl='parallel')),
    'sequential': jax.jit(
        lambda c, n: assign.combination_assign_with_rounds(c, n, impl='sequential')),
    'rounds': _rounds_only(True),
    'rounds_without_shortcuts': _rounds_only(False),
}


def disagreements(costs, counts):
  """The names of the implementations whose labels or counts differ from the definition."""
  with jax.enable_x64(costs.dtype == np.float64):
    labels, final = assign_tables.definition(costs, counts)
    outs = {name: fn(jnp.asarray(costs), jnp.asarray(counts)) for name, fn in IMPLS.items()}
  return [name for name, out in outs.items()
          if not (np.array_equal(np.asarray(out[0]), labels) and
                  np.array_equal(np.asarray(out[1]), final))]


def test_the_reported_near_tie_table():
  """0.50000006 + log 2 rounds to 0.5 + log 2 in float32: point 0 ties point 1 for cluster 0 after
  point 3's intake and wins by index, so point 1 goes to cluster 1."""
  costs = np.array([[0.50000006, 100, 100], [0.5, 1.4, 100], [0.5, 100, 0], [0, 100, 100]],
                   np.float32)
  labels, counts = assign_tables.definition(costs, np.zeros(3, np.int32))
  assert labels.tolist() == [0, 1, 2, 0] and counts.tolist() == [2, 1, 1]
  assert disagreements(costs, np.zeros(3, np.int32)) == []
  with jax.enable_x64(True):  # The same pattern in float64: 0.5 + 2**-52 beside 0.5.
    costs = costs.astype(np.float64)
    costs[0, 0] = np.nextafter(0.5, 1)
    assert assign_tables.definition(costs, np.zeros(3, np.int32))[0].tolist() == [0, 1, 2, 0]
  assert disagreements(costs, np.zeros(3, np.int32)) == []


@pytest.mark.slow
@settings(deadline=None, max_examples=100, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(assign_tables.KINDS),
       dtype=st.sampled_from(assign_tables.DTYPES),
       shape=st.sampled_from(assign_tables.SHAPES))
def test_property_adversarial_tables(seed, kind, dtype, shape):
  costs, counts, _, _ = assign_tables.random_case(np.random.default_rng(seed), kind, dtype, shape)
  assert disagreements(costs, counts) == []


@pytest.mark.slow
def test_search():
  """OHC_ASSIGN_SEARCH tables (default 300) of every kind and dtype; prints the tally."""
  total = int(os.environ.get('OHC_ASSIGN_SEARCH', '300'))
  rng = np.random.default_rng(int(os.environ.get('OHC_ASSIGN_SEARCH_SEED', '0')))
  tally, failures = collections.Counter(), collections.Counter()
  for _ in range(total):
    costs, counts, kind, dtype = assign_tables.random_case(rng)
    tally[kind, dtype] += 1
    for name in disagreements(costs, counts):
      failures[name, kind, dtype] += 1
  print(f'\n{total} tables: ' + ', '.join(f'{k}/{d} {n}' for (k, d), n in sorted(tally.items())))
  print(f'disagreements: {sum(failures.values())} {dict(failures)}')
  assert not failures


@pytest.mark.slow
@pytest.mark.parametrize('dtype', assign_tables.DTYPES)
def test_non_finite_costs_are_documented(dtype):
  """NaN counts as +inf; infinite values are taken last (+inf) or first (-inf), ties by index."""
  dt = assign_tables.np_dtype(dtype)
  costs = np.array([[np.nan, 1, 2], [0, np.inf, -np.inf], [np.nan, np.nan, np.nan], [3, 0, 1]], dt)
  labels, _ = assign_tables.definition(costs, np.zeros(3, np.int32))
  assert labels.tolist() == [1, 2, 0, 1]
  assert disagreements(costs, np.zeros(3, np.int32)) == []
