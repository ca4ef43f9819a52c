"""Clustering metrics: ACC (Hungarian matching), NMI, ARI, KL*, cluster-size histograms."""

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def contingency(labels: np.ndarray, clusters: np.ndarray, num_clusters: int) -> np.ndarray:
  """counts[k, c]: points of class c put in cluster k."""
  num_classes = int(labels.max()) + 1 if len(labels) else 1
  table = np.zeros((num_clusters, num_classes), np.int64)
  np.add.at(table, (clusters, labels), 1)
  return table


def hungarian_map(labels: np.ndarray, clusters: np.ndarray, num_clusters: int) -> np.ndarray:
  """cluster -> class, the one-to-one matching with the most agreeing points (-1: unmatched)."""
  table = contingency(labels, clusters, num_clusters)
  rows, cols = linear_sum_assignment(table, maximize=True)
  mapping = np.full(num_clusters, -1, np.int64)
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
