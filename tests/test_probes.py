"""Representation probes: near 1 on separable encodings, near chance on shuffled labels."""

import numpy as np

from ohc_jax.core import probes


def _blobs(n=900, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n)
  centres = rng.normal(size=(classes, 16)) * 10
  return centres[labels] + rng.normal(size=(n, 16)), labels


def test_separable_encodings_give_accuracy_near_one():
  z, labels = _blobs()
  acc = probes.probe_accuracies(z, labels, seed=0)
  assert acc['linear_probe_acc'] > 0.98 and acc['knn_probe_acc'] > 0.98
  assert acc == probes.probe_accuracies(z, labels, seed=0)  # The split is fixed by the seed.


def test_shuffled_labels_give_chance():
  z, labels = _blobs()
  shuffled = np.random.default_rng(1).permutation(labels)
  acc = probes.probe_accuracies(z, shuffled, seed=0)
  assert abs(acc['linear_probe_acc'] - 1 / 3) < 0.08 and abs(acc['knn_probe_acc'] - 1 / 3) < 0.08
