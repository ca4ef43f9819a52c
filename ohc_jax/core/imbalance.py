"""Imbalanced data: the reference's class keep-probabilities, seeded sampling, the prior's matching
to clusters, and which methods' costs it enters."""

import jax.numpy as jnp
import numpy as np

from ohc_jax.core import metrics

MODES = (0, 1, 2, 3)
MATCHINGS = ('identity', 'size', 'hungarian')
SCOPES = ('combination', 'all')


def keep_probabilities(mode: int, num_classes: int) -> np.ndarray:
  """The probability that a point of each class is kept, for imbalance modes 0 to 3."""
  c = num_classes
  if mode == 0:
    return np.ones(c)
  if mode == 1:  # The first ceil(C/2) classes whole, the rest down to 0.8.
    return np.concatenate([np.ones(c - c // 2), 1 - 0.2 * np.linspace(0, 1, c // 2)])
  if mode == 2:
    return 1 - 0.5 * np.linspace(0, 1 - 1 / c, c)
  if mode == 3:
    return 1 - np.linspace(0, 1 - 1 / c, c)
  raise ValueError(f'imbalance mode must be one of {MODES}, got {mode}')


def subsample(labels: np.ndarray, probabilities: np.ndarray, seed: int) -> np.ndarray:
  """Indices of the points kept, each independently with its class's probability; seeded."""
  draws = np.random.default_rng([seed, 7]).random(len(labels))
  return np.flatnonzero(draws < probabilities[labels])


def matched_log_prior(prior: np.ndarray, table: np.ndarray, how: str) -> np.ndarray:
  """log(K prior_k) per cluster, the prior's entries matched to clusters.

  'identity': cluster k gets entry k, whatever the clusters hold; this is what the reference's code
  does (its translation dict's keys are the classes in order, so it indexes the prior by 0..K-1).
  'size' (label-free): the largest cluster gets the largest entry, the second largest the second,
  and so on. 'hungarian': cluster k gets the entry of the class the Hungarian matching gives it,
  which peeks at the labels (what the reference's translation dict appears meant for). `table`:
  the evaluation's (clusters x classes) contingency table (metrics.contingency).
  """
  num_clusters = len(prior)
  if how == 'identity':
    matched = np.asarray(prior, np.float64)
  elif how == 'hungarian':
    to_class = metrics.table_hungarian_map(table)
    matched = prior[np.where(to_class >= 0, to_class, np.arange(num_clusters)) % len(prior)]
  else:
    sizes = table.sum(1)
    matched = np.empty(num_clusters)
    matched[np.argsort(-sizes, kind='stable')] = np.sort(prior)[::-1]
  matched = matched / matched.sum()
  return np.log(num_clusters * matched).astype(np.float32)


def cost_log_prior(config, log_prior):
  """The log prior config.method's costs (and Sinkhorn's marginals) get: all of it under
  prior_scope 'all'; under 'combination' (the reference shifts only the combination assignment's
  costs) zeros, the uniform prior, for every other method. Training and evaluation both use this."""
  if config.prior_scope == 'all' or config.method == 'combination':
    return log_prior
  return jnp.zeros_like(log_prior)
