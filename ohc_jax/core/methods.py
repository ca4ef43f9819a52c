"""Training methods. Each maps a differentiable (B, K) cost table, the cluster counts so far and the
method's dual variables (used by `coke` only) to (labels, counts, loss, duals). Labels are computed on
stop_gradient(costs) and carry no gradient. `make_method` binds the options, takes the log prior
too (used by the Sinkhorn methods) and adds the counts a method reports to the step logs. Each
method against the reference's, with its file and line: docs/fidelity.md. `ckm`'s reconstruction
term needs the images and is added by the train step (steps.py) to its clustering term here.
"""

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from ohc_jax.core import assign

SINKHORN_EPSILON = 0.5
SINKHORN_ITERATIONS = 15
HARD_SINKHORN_WEIGHT = 0.1  # The reference's eps2: weight of the one-hot argmax in the plan.
NEURAL_GAS_TEMPERATURE = 1.0
COKE_MIN_FRACTION = 0.5  # Each cluster is pushed to hold at least this fraction of B / K points.
COKE_DUAL_STEP = 0.1
CKM_CLUSTER_WEIGHT = 1e-7  # The reference's weight of the clustering term (train.py:253 at 37a5908).


def _mean_cost_of(costs, labels):
  return jnp.mean(jnp.take_along_axis(costs, labels[:, None], axis=1))


def _count(labels, counts):
  return counts + jnp.bincount(labels, length=counts.shape[0]).astype(counts.dtype)


def combination(costs, counts, duals, *, impl='parallel'):
  """The paper's method: combination assignment, loss = mean cost of the assigned clusters."""
  labels, counts = assign.combination_assign(jax.lax.stop_gradient(costs), counts, impl=impl)
  return labels, counts, _mean_cost_of(costs, labels), duals


def no_regularisation(costs, counts, duals):
  """Plain argmin labels: collapses, which is the point of this baseline."""
  labels, counts = assign.argmin_assign(jax.lax.stop_gradient(costs), counts)
  return labels, counts, _mean_cost_of(costs, labels), duals


def sinkhorn_plan(scores, marginals, *, hard=False, epsilon=SINKHORN_EPSILON,
                  iterations=SINKHORN_ITERATIONS):
  """SwAV's balanced transport plan (B, K) of `scores`: each point's row sums to 1 / B exactly
  (the last normalisation), each cluster's column to its entry of `marginals` (which sum to one)
  approximately. `hard` mixes the hard argmax counts into the plan before balancing (weight 0.1 per
  point, as the reference) and subtracts them after, scaled to the plan's mass (the reference
  subtracts unit counts from a plan whose points weigh 1 / B; docs/fidelity.md)."""
  batch, num_clusters = scores.shape
  q = jax.nn.softmax(scores / epsilon, axis=1)  # exp(scores / epsilon), each point's row to one.
  if hard:
    onehot = jax.nn.one_hot(jnp.argmax(q, axis=1), num_clusters, dtype=q.dtype)
    q = (q + HARD_SINKHORN_WEIGHT * onehot) / (1 + HARD_SINKHORN_WEIGHT)

  def balance(q, _):
    q = q * (marginals / jnp.sum(q, axis=0))[None, :]
    q = q / jnp.sum(q, axis=1, keepdims=True) / batch
    return q, None

  q, _ = jax.lax.scan(balance, q, None, length=iterations)
  if hard:
    q = 2 * q - onehot / batch
  return q


def _sinkhorn(costs, counts, duals, log_prior, *, hard):
  plan = sinkhorn_plan(-jax.lax.stop_gradient(costs), jax.nn.softmax(log_prior), hard=hard)
  labels = jnp.argmax(plan, axis=1).astype(jnp.int32)  # The reference's argmin: docs/fidelity.md.
  return labels, _count(labels, counts), _mean_cost_of(costs, labels), duals


def _entropy(p, axis=-1):
  return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=axis)


def entropy(costs, counts, duals):
  """-100 H(batch-mean assignment) + 0.1 mean per-point entropy; assignment = softmax(-costs)."""
  p = jax.nn.softmax(-costs, axis=1)
  loss = -100 * _entropy(jnp.mean(p, axis=0)) + 0.1 * jnp.mean(_entropy(p))
  labels, counts = assign.argmin_assign(jax.lax.stop_gradient(costs), counts)
  return labels, counts, loss, duals


def _reference_distributions(costs):
  """entropy_reference's 'distributions': each row of costs, and their batch mean, over its sum."""
  mean = jnp.mean(costs, axis=0)
  return costs / jnp.sum(costs, axis=1, keepdims=True), mean / jnp.sum(mean)


def entropy_reference(costs, counts, duals):
  """The reference's form (see docs/fidelity.md): -100 H(q) + 0.1 mean_i H(p_i), with p_i the row
  C_i / sum_k C[i,k] and q the batch-mean row over its sum. Entries of p or q below zero (or NaN),
  which the reference's torch Categorical refuses with a ValueError, are left out of the entropies
  here (as 0 log 0); `refused_entries` counts them for the step logs."""
  p, q = _reference_distributions(costs)
  loss = -100 * _entropy(q) + 0.1 * jnp.mean(_entropy(p))
  labels, counts = assign.argmin_assign(jax.lax.stop_gradient(costs), counts)
  return labels, counts, loss, duals


def refused_entries(costs) -> jax.Array:
  """How many entries of entropy_reference's p and q are not >= 0: those it leaves out."""
  p, q = _reference_distributions(jax.lax.stop_gradient(costs))
  return jnp.sum(~(p >= 0)) + jnp.sum(~(q >= 0))


def variance(costs, counts, duals, *, improved=False):
  """The paper's SS: 10 mean_k (mean_i C[i,k])^2 (or 10 Var_k) + 0.1 mean_i min_k C[i,k]."""
  column_means = jnp.mean(costs, axis=0)
  spread = jnp.var(column_means, ddof=1) if improved else jnp.mean(column_means ** 2)
  labels, counts = assign.argmin_assign(jax.lax.stop_gradient(costs), counts)
  return labels, counts, 10 * spread + 0.1 * _mean_cost_of(costs, labels), duals


def neural_gas(costs, counts, duals, *, temperature=NEURAL_GAS_TEMPERATURE):
  """Clusters ranked by 0.1 C + log(n_k + 1), weights exp(-rank / T); label = rank 0.

  Loss: the batch mean of each point's weighted sum of squared ranked values (the reference returns
  the per-point vector, which its backward() cannot take; docs/fidelity.md)."""
  values = 0.1 * costs + jnp.log1p(counts.astype(costs.dtype))[None, :]
  order = jnp.argsort(jax.lax.stop_gradient(values), axis=1)
  ranked = jnp.take_along_axis(values, order, axis=1)
  weights = jnp.exp(-jnp.arange(costs.shape[1], dtype=costs.dtype) / temperature)
  labels = order[:, 0].astype(jnp.int32)
  return labels, _count(labels, counts), jnp.mean(jnp.sum(ranked ** 2 * weights, axis=1)), duals


def coke(costs, counts, duals):
  """Online constrained k-means after CoKe (Qian et al. 2022), designed in this project as a
  baseline (not in the paper): labels = argmin_k C[i,k] - duals_k; the duals rise for clusters below
  COKE_MIN_FRACTION * B / K points in the batch, and fall otherwise (never below 0)."""
  batch, num_clusters = costs.shape
  labels = jnp.argmin(jax.lax.stop_gradient(costs) - duals[None, :], axis=1).astype(jnp.int32)
  sizes = jnp.bincount(labels, length=num_clusters).astype(costs.dtype)
  shortfall = COKE_MIN_FRACTION / num_clusters - sizes / batch
  duals = jnp.maximum(0.0, duals + COKE_DUAL_STEP * num_clusters * shortfall)
  return labels, _count(labels, counts), _mean_cost_of(costs, labels), duals


def ckm_reconstruction(decode, centroids, costs, images, key):
  """The paper's CKM reconstruction term (the reference's dec_loss, train.py:272-282 at 37a5908).

  Each point decodes a mix of centroids weighted by gumbel_softmax(C_i) (the reference's logits are
  the costs, so far centroids weigh most) and is scored by the MSE to its image; the value is
  rescaled, with constant factor, to the MSE of decoding the mix's heaviest centroid alone (the
  reference's straight-through trick). Gradients reach the centroids only: the weights are constant
  and the caller holds the decoder fixed."""
  weights = jax.nn.softmax(jax.lax.stop_gradient(costs) + jax.random.gumbel(key, costs.shape),
                           axis=1)
  soft = jnp.mean(jnp.square(images - decode(weights @ centroids)))
  heaviest = jax.lax.stop_gradient(centroids)[jnp.argmax(weights, axis=1)]
  hard = jnp.mean(jnp.square(images - decode(heaviest)))
  return soft * jax.lax.stop_gradient(hard / soft)


def ckm_pretrain_steps(config, steps_per_epoch: int) -> int:
  """Steps of reconstruction only: the reference's epochs e (from 0) with e < epochs x pretrain_frac
  (train.py:250 at 37a5908)."""
  return math.ceil(config.num_epochs * config.ckm_pretrain_frac) * steps_per_epoch


def soft_loss(costs):
  """`soft_train`: mean_i sum_k softmax(-C_i)_k C[i,k], the weights held constant as in the
  reference's Sinkhorn branch, which averages over all B x K entries instead (docs/fidelity.md)."""
  weights = jax.lax.stop_gradient(jax.nn.softmax(-costs, axis=1))
  return jnp.mean(jnp.sum(weights * costs, axis=1))


# The methods whose loss is the mean cost of the labels, which `soft_train` replaces.
SOFT_TRAIN_METHODS = ('combination', 'none', 'sinkhorn', 'hard_sinkhorn', 'coke')
# The methods that reconstruct the images from the centroids, so need square image inputs.
IMAGE_METHODS = ('ckm',)
# The methods whose gradients change when every cost is shifted by one constant, so that
# config.log_normaliser matters for them. The others' labels and gradients do not (variance_improved:
# Var_k is shift-invariant and the mean min cost moves by the constant alone).
SHIFT_DEPENDENT_METHODS = ('entropy_reference', 'variance', 'neural_gas')


def log_normaliser(config) -> float:
  """The constant the reference adds to every cost (docs/fidelity.md): the log-normaliser of its
  Gaussian, -(nz / 2) log(sigma) (-294.7 for nz = 128, sigma = 100), or 0 without
  config.log_normaliser."""
  return -0.5 * config.latent_dim * math.log(config.sigma) if config.log_normaliser else 0.0


def _plain(fn):
  return lambda config: lambda c, n, d, p: fn(c, n, d)


# Methods by name (config.method): `make(config) -> (costs, counts, duals, log_prior) -> (labels,
# counts, loss, duals)`.
METHODS = {
    'combination': lambda config: lambda c, n, d, p: combination(c, n, d, impl=config.assign_impl),
    'none': _plain(no_regularisation),
    'sinkhorn': lambda config: lambda c, n, d, p: _sinkhorn(c, n, d, p, hard=False),
    'hard_sinkhorn': lambda config: lambda c, n, d, p: _sinkhorn(c, n, d, p, hard=True),
    'entropy': _plain(entropy),
    'entropy_reference': _plain(entropy_reference),
    'variance': _plain(variance),
    'variance_improved': _plain(functools.partial(variance, improved=True)),
    'neural_gas': _plain(neural_gas),
    'ckm': _plain(no_regularisation),  # ckm's clustering term (train.py:165-167 at 37a5908).
    'coke': _plain(coke),
}


def make_method(config) -> Callable[..., tuple]:
  """`(costs, counts, duals, log_prior) -> (labels, counts, loss, duals, metrics)` for
  config.method (for `ckm` its clustering term), with the loss replaced by `soft_loss` under
  config.soft_train. `metrics` holds the per-step counts the method reports for the step logs
  (summed over devices): entropy_reference's `refused_entries`; empty for the others."""
  name = config.method
  shift = log_normaliser(config) if name in SHIFT_DEPENDENT_METHODS else 0.0
  method = METHODS[name](config)

  def bound(costs, counts, duals, log_prior):
    labels, counts, loss, duals = method(costs + shift if shift else costs, counts, duals, log_prior)
    metrics = ({'refused_entries': refused_entries(costs + shift)}
               if name == 'entropy_reference' else {})
    return labels, counts, soft_loss(costs) if config.soft_train else loss, duals, metrics
  return bound
