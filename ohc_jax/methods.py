"""Training methods: each maps a differentiable (B, K) cost table and the cluster counts so far to
(labels, counts, loss). Labels are computed on stop_gradient(costs) and carry no gradient."""

from typing import Callable

import jax
import jax.numpy as jnp

from ohc_jax import assign

MethodFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]


def _mean_cost_of(costs, labels):
  return jnp.mean(jnp.take_along_axis(costs, labels[:, None], axis=1))


def combination(costs, counts, *, impl='parallel'):
  """The paper's method: combination assignment, loss = mean cost of the assigned clusters."""
  labels, counts = assign.combination_assign(jax.lax.stop_gradient(costs), counts, impl=impl)
  return labels, counts, _mean_cost_of(costs, labels)


def no_regularisation(costs, counts):
  """Plain argmin labels: collapses, which is the point of this baseline."""
  labels, counts = assign.argmin_assign(jax.lax.stop_gradient(costs), counts)
  return labels, counts, _mean_cost_of(costs, labels)


METHODS = {'combination': combination, 'none': no_regularisation}


def make_method(config) -> MethodFn:
  """The method named by config.method, with its options bound."""
  if config.method == 'combination':
    return lambda costs, counts: combination(costs, counts, impl=config.assign_impl)
  return METHODS[config.method]
