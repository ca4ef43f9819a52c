"""Representation probes (the reference's `train_test_probes`): how well the encodings z predict the
classes. A logistic regression (scikit-learn's defaults, as the reference) and a 10-nearest-neighbour
classifier are fit on a fixed 67% of the points, drawn by the seed, and scored on the other 33%
(the reference's split is unseeded, and it reports the epoch of the best probe: docs/fidelity.md)."""

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

NEIGHBOURS = 10
TEST_FRACTION = 0.33


def probe_accuracies(z: np.ndarray, labels: np.ndarray, seed: int) -> dict:
  """{'linear_probe_acc', 'knn_probe_acc'}: test accuracies of the two probes."""
  z_train, z_test, y_train, y_test = train_test_split(
      np.asarray(z, np.float64), labels, test_size=TEST_FRACTION, random_state=seed)
  with warnings.catch_warnings():  # The reference's 100 iterations need not converge.
    warnings.simplefilter('ignore', ConvergenceWarning)
    linear = LogisticRegression().fit(z_train, y_train)
  knn = KNeighborsClassifier(n_neighbors=min(NEIGHBOURS, len(y_train))).fit(z_train, y_train)
  return {'linear_probe_acc': float(linear.score(z_test, y_test)),
          'knn_probe_acc': float(knn.score(z_test, y_test))}
