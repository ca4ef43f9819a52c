"""The whole training state as one pytree, and its initialisation."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from ohc_jax import models
from ohc_jax.core import costs


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken.
  params: Any  # {'encoder', 'centroids': (K, nz)[, 'log_precision' or 'precision'][, 'decoder']}
  batch_stats: Any  # BatchNorm running statistics.
  opt_state: Any
  counts: jax.Array  # (K,) int32: points given to each cluster (this epoch, with keep_counts).
  log_prior: jax.Array  # (K,) float32: log(prior_k * K) (zero: uniform); costs: cost_log_prior.
  bad_step: jax.Array  # int32 scalar: first step whose loss, costs or gradients were not finite; -1.
  duals: jax.Array  # (K,) float32: the coke method's dual variables (zero for other methods).


def make_optimizer(config) -> optax.GradientTransformation:
  """One Adam over encoder parameters and centroids."""
  return optax.adam(config.learning_rate)


def create_train_state(config, model, tx, input_shape, rng) -> TrainState:
  """Initial state: encoder from `model.init`, centroids drawn from N(0, 1), uniform prior, the
  precisions of config.covariance (costs.covariance_params) and, for `ckm`, its decoder (from
  its own stream of `rng`, so that the other draws are those of every method)."""
  enc_rng, centroid_rng = jax.random.split(rng)
  variables = model.init(enc_rng, jnp.zeros((2,) + tuple(input_shape), jnp.float32), train=False)
  centroids = jax.random.normal(centroid_rng, (config.num_clusters, config.latent_dim), jnp.float32)
  params = {'encoder': variables['params'], 'centroids': centroids,
            **costs.covariance_params(config)}
  if config.method == 'ckm':
    decoder = models.make_decoder(config, input_shape)
    params['decoder'] = decoder.init(jax.random.fold_in(rng, 1), centroids[:2])['params']
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get('batch_stats', {}),
      opt_state=tx.init(params),
      counts=jnp.zeros((config.num_clusters,), jnp.int32),
      log_prior=jnp.zeros((config.num_clusters,), jnp.float32),
      bad_step=jnp.full((), -1, jnp.int32),
      duals=jnp.zeros((config.num_clusters,), jnp.float32),
  )
