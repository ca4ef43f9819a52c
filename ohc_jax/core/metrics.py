"""Clustering metrics: ACC (Hungarian matching), NMI, ARI, KL*, cluster-size histograms; over
arrays of every point, or accumulated batch by batch (`Accumulator`) for sets too large to keep."""

import math

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, mutual_info_score, normalized_mutual_info_score


def contingency(labels: np.ndarray, clusters: np.ndarray, num_clusters: int) -> np.ndarray:
  """counts[k, c]: points of class c put in cluster k."""
  num_classes = int(labels.max()) + 1 if len(labels) else 1
  table = np.zeros((num_clusters, num_classes), np.int64)
  np.add.at(table, (clusters, labels), 1)
  return table


def hungarian_map(labels: np.ndarray, clusters: np.ndarray, num_clusters: int) -> np.ndarray:
  """cluster -> class, the one-to-one matching with the most agreeing points (-1: unmatched)."""
  return table_hungarian_map(contingency(labels, clusters, num_clusters))


def table_hungarian_map(table: np.ndarray) -> np.ndarray:
  """hungarian_map from the (clusters x classes) contingency table."""
  rows, cols = linear_sum_assignment(table, maximize=True)
  mapping = np.full(len(table), -1, np.int64)
  mapping[rows] = cols
  return mapping


def cluster_accuracy(labels: np.ndarray, clusters: np.ndarray, num_clusters: int) -> float:
  """ACC: accuracy under the best one-to-one matching of clusters to classes."""
  mapping = hungarian_map(labels, clusters, num_clusters)
  return float(np.mean(mapping[clusters] == labels))


def kl_star(sizes: np.ndarray, prior: np.ndarray) -> float:
  """KL(q || prior) of the hard cluster-size distribution q from the prior (0 log 0 = 0)."""
  q = sizes / max(sizes.sum(), 1)
  nz = q > 0
  return float(np.sum(q[nz] * (np.log(q[nz]) - np.log(prior[nz]))))


def clustering_metrics(labels: np.ndarray, clusters: np.ndarray, soft_sizes: np.ndarray,
                       prior: np.ndarray) -> dict:
  """Every metric of one evaluation pass, JSON-ready."""
  num_clusters = len(prior)
  sizes = np.bincount(clusters, minlength=num_clusters)
  return {
      'acc': cluster_accuracy(labels, clusters, num_clusters),
      'nmi': float(normalized_mutual_info_score(labels, clusters)),
      'ari': float(adjusted_rand_score(labels, clusters)),
      'kl_star': kl_star(sizes, prior),
      'num_nonempty': int(np.sum(sizes > 0)),
      'hard_sizes': sizes.tolist(),
      'soft_sizes': [round(float(s), 3) for s in soft_sizes],
  }


def _entropy(counts: np.ndarray) -> float:
  """sklearn's label entropy, from the positive counts of the labels in sorted order."""
  if counts.size == 1:
    return 0.0
  pi = counts.astype(np.float64)
  total = pi.sum()
  return float(-np.sum((pi / total) * (np.log(pi) - math.log(total))))


def table_nmi(table: np.ndarray) -> float:
  """`normalized_mutual_info_score` (arithmetic normalisation) from the contingency table, step
  for step as sklearn computes it from the labels (which sklearn cannot take a table for)."""
  table = table[table.sum(1) > 0][:, table.sum(0) > 0].T  # sklearn's: classes x clusters present.
  if table.shape[0] == table.shape[1] <= 1:
    return 1.0
  mi = mutual_info_score(None, None, contingency=sparse.csr_matrix(table))
  if mi == 0:
    return 0.0
  return float(mi / np.mean([_entropy(table.sum(1)), _entropy(table.sum(0))]))


def table_ari(table: np.ndarray) -> float:
  """`adjusted_rand_score` from the contingency table: sklearn's pair counts, exact integers."""
  n, squares = int(table.sum()), int((table ** 2).sum())
  fp = int((table @ table.sum(0)).sum()) - squares
  fn = int((table.T @ table.sum(1)).sum()) - squares
  tp, tn = squares - n, n * n - fp - fn - squares
  if fn == 0 and fp == 0:
    return 1.0
  return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def table_metrics(table: np.ndarray, soft_sizes: np.ndarray, prior: np.ndarray) -> dict:
  """`clustering_metrics` from the (clusters x classes) contingency table alone."""
  sizes = table.sum(1)
  n = int(sizes.sum())
  rows, cols = linear_sum_assignment(table, maximize=True)  # The matching hungarian_map makes.
  matched = int(table[rows, cols].sum())
  return {
      'acc': matched / n if n else float('nan'),
      'nmi': table_nmi(table),
      'ari': table_ari(table),
      'kl_star': kl_star(sizes, prior),
      'num_nonempty': int(np.sum(sizes > 0)),
      'hard_sizes': sizes.tolist(),
      'soft_sizes': [round(float(s), 3) for s in soft_sizes],
  }


class Accumulator:
  """Evaluation metrics fed batch by batch, keeping only the contingency table and the soft sizes:
  memory grows with clusters x classes, not with the evaluation set."""

  def __init__(self, num_clusters: int):
    self.table = np.zeros((num_clusters, 1), np.int64)  # Grows a column per new largest label.
    self.soft_sizes = np.zeros(num_clusters, np.float64)

  def add(self, labels: np.ndarray, clusters: np.ndarray, soft: np.ndarray, valid: int,
          keep: np.ndarray | None = None) -> None:
    """One batch: the first `valid` rows of labels, hard clusters and soft assignments (B, K);
    of those, the ones `keep` marks, when given."""
    rows = np.arange(valid) if keep is None else np.flatnonzero(keep[:valid])
    labels, clusters, soft = (np.asarray(labels)[rows].astype(np.int64),
                              np.asarray(clusters)[rows].astype(np.int64), np.asarray(soft)[rows])
    num_clusters, width = self.table.shape
    if len(rows) and labels.max() >= width:
      width = int(labels.max()) + 1
      self.table = np.pad(self.table, ((0, 0), (0, width - self.table.shape[1])))
    self.table += np.bincount(clusters * width + labels,
                              minlength=num_clusters * width).reshape(num_clusters, width)
    self.soft_sizes += np.asarray(soft, np.float64).sum(0)

  def result(self, prior: np.ndarray) -> dict:
    return table_metrics(self.table, self.soft_sizes, prior)
