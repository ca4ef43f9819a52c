"""Cluster costs C[i, k] = ||z_i - mu_k||^2 / sigma - log(K prior_k) (no shift for a uniform prior),
and the covariance options that replace ||.||^2 / sigma by a Mahalanobis distance.

config.covariance: 'fixed' (sigma I, the default); 'learned_diagonal' (params['log_precision'], (K, nz),
trained with the rest: C = sum_d p_kd (z_d - mu_kd)^2 - sum_d log(sigma p_kd), the Gaussian negative
log-likelihood up to a factor and a constant, so that precisions cannot shrink to zero for free; equal
to the fixed cost at initialisation); 'estimated' (params['precision'], (K, nz, nz), never trained:
re-estimated after each epoch by `estimate_precisions`; C = (z - mu_k)^T P_k (z - mu_k), without a
log-determinant term of the estimates, as the reference's `--estimate_covars`, whose term stays the
constant of sigma I). Both against the reference's options: docs/fidelity.md.

The products here run at `HIGHEST` precision: float32 on every backend, where an NVIDIA GPU's default
for float32 matmuls may be TF32 (10-bit mantissa) and a TPU's bfloat16 passes. The table feeds an
exact assignment, whose labels must be those of the float32 table (docs/fidelity.md).
"""

import jax
import jax.numpy as jnp
import numpy as np

COVARIANCES = ('fixed', 'learned_diagonal', 'estimated')


_HIGHEST = jax.lax.Precision.HIGHEST


def _matmul(a, b):
  """a @ b in float32 on every backend (no TF32, no bfloat16 passes)."""
  return jnp.matmul(a, b, precision=_HIGHEST)


def squared_distances(z, centroids):
  """||z_i - mu_k||^2 for every pair, as a (B, K) table (matmul form, clamped at zero)."""
  d = (jnp.sum(z * z, axis=1, keepdims=True) - 2.0 * _matmul(z, centroids.T)
       + jnp.sum(centroids * centroids, axis=1)[None, :])
  return jnp.maximum(d, 0.0)


def cluster_costs(z, centroids, sigma, log_prior):
  """The (B, K) cost table of the method: squared distance over sigma minus the log prior."""
  return squared_distances(z, centroids) / sigma - log_prior[None, :]


def covariance_params(config) -> dict:
  """The parameters config.covariance adds to {'encoder', 'centroids'}: precisions 1 / sigma."""
  k, nz, sigma = config.num_clusters, config.latent_dim, config.sigma
  if config.covariance == 'learned_diagonal':
    return {'log_precision': jnp.full((k, nz), -np.log(sigma), jnp.float32)}
  if config.covariance == 'estimated':
    return {'precision': jnp.broadcast_to(jnp.eye(nz, dtype=jnp.float32) / sigma, (k, nz, nz))}
  return {}


def param_costs(z, params, sigma, log_prior):
  """The (B, K) cost table for whichever covariance `params` carries (see the module docstring)."""
  mu = params['centroids']
  if 'log_precision' in params:
    log_p = params['log_precision']
    p = jnp.exp(log_p)
    quad = (_matmul(z * z, p.T) - 2.0 * _matmul(z, (p * mu).T)
            + jnp.sum(p * mu * mu, axis=1)[None, :])
    costs = jnp.maximum(quad, 0.0) - jnp.sum(log_p + jnp.log(sigma), axis=1)[None, :]
  elif 'precision' in params:
    p = jax.lax.stop_gradient(params['precision'])
    p_mu = jnp.einsum('kde,ke->kd', p, mu, precision=_HIGHEST)
    quad = (jnp.einsum('bd,kde,be->bk', z, p, z, precision=_HIGHEST) - 2.0 * _matmul(z, p_mu.T)
            + jnp.sum(mu * p_mu, axis=1)[None, :])
    costs = jnp.maximum(quad, 0.0)
  else:
    return cluster_costs(z, mu, sigma, log_prior)
  return costs - log_prior[None, :]


def estimate_precisions(z: np.ndarray, clusters: np.ndarray, num_clusters: int, sigma: float):
  """(precisions (K, nz, nz), None), or (None, why) when some cluster has too few points.

  P_k = inverse of cluster k's sample covariance, all rescaled by one factor so that the mean trace
  stays nz / sigma (the reference rescales to keep the mean entry; a trace cannot change sign)."""
  nz = z.shape[1]
  sizes = np.bincount(clusters, minlength=num_clusters)
  short = np.flatnonzero(sizes <= nz)
  if len(short):
    return None, (f'clusters {short.tolist()} hold {sizes[short].tolist()} points, and a full '
                  f'covariance in {nz} dimensions needs at least {nz + 1}')
  z = z.astype(np.float64)
  covs = np.stack([np.cov(z[clusters == k].T) for k in range(num_clusters)])
  ridge = 1e-6 * np.trace(covs, axis1=1, axis2=2).mean() / nz
  try:
    precisions = np.linalg.inv(covs + ridge * np.eye(nz))
  except np.linalg.LinAlgError as e:
    return None, f'a covariance is singular ({e})'
  precisions *= nz / sigma / np.trace(precisions, axis1=1, axis2=2).mean()
  if not np.all(np.isfinite(precisions)):
    return None, 'the inverse covariances are not finite'
  return precisions.astype(np.float32), None
