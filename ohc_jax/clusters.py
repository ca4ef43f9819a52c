"""Cluster costs C[i, k] = ||z_i - mu_k||^2 / sigma - log(K prior_k) (no shift for a uniform prior)."""

import jax.numpy as jnp


def squared_distances(z, centroids):
  """||z_i - mu_k||^2 for every pair, as a (B, K) table (matmul form, clamped at zero)."""
  d = (jnp.sum(z * z, axis=1, keepdims=True) - 2.0 * z @ centroids.T
       + jnp.sum(centroids * centroids, axis=1)[None, :])
  return jnp.maximum(d, 0.0)


def cluster_costs(z, centroids, sigma, log_prior):
  """The (B, K) cost table of the method: squared distance over sigma minus the log prior."""
  return squared_distances(z, centroids) / sigma - log_prior[None, :]
