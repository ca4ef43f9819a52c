"""Comparing feeds in tests: two sequences of batches equal key by key, value and dtype."""

import numpy as np


def assert_same_batches(got, want):
  got, want = list(got), list(want)
  assert len(got) == len(want)
  for a, b in zip(got, want):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
      assert a[key].dtype == b[key].dtype
