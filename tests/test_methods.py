"""The baselines: finite losses, gradients, labels; Sinkhorn's marginals; collapse without regulariser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ohc_jax import configuration, models
from ohc_jax.core import methods
from ohc_jax.run import train
from ohc_jax.core.costs import cluster_costs
from ohc_jax.errors import UsageError


@pytest.mark.parametrize('name', methods.METHODS)
def test_method_gives_finite_loss_gradients_and_labels(name, digits_config):
  digits_config.method = name
  method = methods.make_method(digits_config)
  model = models.MLPEncoder(latent_dim=16, hidden_dim=32)
  x = jax.random.normal(jax.random.key(0), (64, 8, 8, 1))
  variables = model.init(jax.random.key(1), x, train=False)
  params = {'encoder': variables['params'],
            'centroids': jax.random.normal(jax.random.key(2), (10, 16))}
  counts, duals, log_prior = jnp.zeros(10, jnp.int32), jnp.zeros(10), jnp.zeros(10)

  def loss_fn(params):
    z, _ = model.apply({'params': params['encoder'], 'batch_stats': variables['batch_stats']}, x,
                       train=True, mutable=['batch_stats'])
    costs = cluster_costs(z, params['centroids'], 10.0, log_prior)
    labels, new_counts, loss, new_duals, _ = method(costs, counts, duals, log_prior)
    return loss, (labels, new_counts, new_duals)

  (loss, (labels, new_counts, new_duals)), grads = jax.jit(
      jax.value_and_grad(loss_fn, has_aux=True))(params)
  assert np.isfinite(float(loss))
  assert labels.shape == (64,) and labels.dtype == jnp.int32
  assert int(labels.min()) >= 0 and int(labels.max()) < 10
  assert int(new_counts.sum()) == 64 and new_duals.shape == (10,)
  assert float(jnp.abs(grads['centroids']).sum()) > 0
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads['encoder']))


@pytest.mark.parametrize('prior', [np.full(6, 1 / 6), np.array([0.3, 0.25, 0.2, 0.1, 0.1, 0.05])])
def test_sinkhorn_plan_meets_its_marginals(prior):
  scores = jax.random.normal(jax.random.key(0), (300, 6))
  plan = methods.sinkhorn_plan(scores, jnp.asarray(prior, jnp.float32))
  np.testing.assert_allclose(plan.sum(1), np.full(300, 1 / 300), atol=1e-6)
  np.testing.assert_allclose(plan.sum(0), prior, atol=1e-3)


def test_coke_duals_favour_starved_clusters():
  costs = jnp.tile(jnp.array([[0.0, 1.0, 2.0]]), (30, 1))
  labels, _, _, duals = methods.coke(costs, jnp.zeros(3, jnp.int32), jnp.zeros(3))
  assert set(np.asarray(labels).tolist()) == {0}
  assert float(duals[0]) == 0.0 and float(duals[1]) > 0 and float(duals[2]) > 0


@pytest.mark.slow
def test_none_collapses_where_combination_does_not(digits_config, tmp_path):
  """A real run on digits: 8 epochs, 11 steps each."""
  digits_config.num_epochs = 8
  used = {}
  for name in ('none', 'combination'):
    digits_config.method = name
    used[name] = train.train_and_evaluate(digits_config, str(tmp_path / name))['final']
  assert used['combination']['num_nonempty'] == 10
  assert used['none']['num_nonempty'] <= 5  # Measured: 2 of 10.
  assert used['none']['kl_star'] > 0.5 * np.log(10) > used['combination']['kl_star']


def test_unknown_method_is_a_usage_error(digits_config):
  digits_config.method = 'kmeans++'
  with pytest.raises(UsageError, match='--config.method'):
    configuration.validate(digits_config)


@pytest.mark.parametrize('name', methods.SHIFT_DEPENDENT_METHODS)
def test_log_normaliser_shifts_the_costs_of_shift_dependent_methods(name, digits_config):
  """The reference's costs carry -(nz/2) log(sigma); these losses see it, their labels do not."""
  costs = jax.random.uniform(jax.random.key(0), (64, 10), minval=0.1, maxval=3.0)
  zeros, counts = jnp.zeros(10), jnp.zeros(10, jnp.int32)
  digits_config.method = name
  shift = -0.5 * digits_config.latent_dim * np.log(digits_config.sigma)
  assert methods.log_normaliser(digits_config) == pytest.approx(shift)
  with_shift = methods.make_method(digits_config)(costs, counts, zeros, zeros)
  digits_config.log_normaliser = False
  without = methods.make_method(digits_config)(costs, counts, zeros, zeros)
  np.testing.assert_array_equal(with_shift[0], without[0])
  base = {'entropy_reference': methods.entropy_reference, 'neural_gas': methods.neural_gas,
          'variance': methods.variance}[name]
  np.testing.assert_allclose(with_shift[2], base(costs + shift, counts, zeros)[2], rtol=1e-5)
  np.testing.assert_allclose(without[2], base(costs, counts, zeros)[2], rtol=1e-5)
  assert abs(float(with_shift[2]) - float(without[2])) > 1e-3


def test_log_normaliser_leaves_shift_invariant_methods_alone(digits_config):
  costs = jax.random.uniform(jax.random.key(1), (64, 10), minval=0.1, maxval=3.0)
  zeros, counts = jnp.zeros(10), jnp.zeros(10, jnp.int32)
  for name in set(methods.METHODS) - set(methods.SHIFT_DEPENDENT_METHODS):
    digits_config.method, digits_config.log_normaliser = name, True
    a = methods.make_method(digits_config)(costs, counts, zeros, zeros)
    digits_config.log_normaliser = False
    b = methods.make_method(digits_config)(costs, counts, zeros, zeros)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[2], b[2])


@pytest.mark.parametrize('name', methods.METHODS)
def test_only_shift_dependent_methods_have_gradients_that_a_constant_shift_changes(
    name, digits_config):
  """What decides which methods config.log_normaliser is applied to: a constant added to every cost
  (here the log-normaliser itself) changes no method's labels, and the gradient of the loss of
  exactly the methods in SHIFT_DEPENDENT_METHODS."""
  costs = jax.random.uniform(jax.random.key(2), (64, 10), minval=0.1, maxval=3.0)
  zeros, counts = jnp.zeros(10), jnp.zeros(10, jnp.int32)
  digits_config.method, digits_config.log_normaliser = name, False
  method = methods.make_method(digits_config)

  def loss(c):
    labels, _, value, _, _ = method(c, counts, zeros, zeros)
    return value, labels

  (_, labels), grad = jax.value_and_grad(loss, has_aux=True)(costs)
  shift = -0.5 * digits_config.latent_dim * np.log(digits_config.sigma)  # -73.7.
  (_, shifted_labels), shifted_grad = jax.value_and_grad(loss, has_aux=True)(costs + shift)
  np.testing.assert_array_equal(labels, shifted_labels)
  change = float(jnp.max(jnp.abs(grad - shifted_grad)))
  if name in methods.SHIFT_DEPENDENT_METHODS:
    assert change > 0.1 * float(jnp.max(jnp.abs(grad)))
  else:  # Float32 rounding of costs near -73.7 alone.
    assert change < 1e-3 * float(jnp.max(jnp.abs(grad)))


def test_entropy_reference_leaves_out_negative_entries_and_counts_them(digits_config):
  """Where the reference's torch Categorical raises on a negative 'probability', ours leaves the
  entry out of the entropy (as 0 log 0) and reports how many it left out."""
  costs = jnp.array([[1.0, 2.0, -0.5, 0.5], [2.0, 1.0, 1.0, 1.0], [0.5, -1.0, 3.0, 0.5]])
  p = np.asarray(costs) / np.asarray(costs).sum(1, keepdims=True)
  q = np.asarray(costs).mean(0) / np.asarray(costs).mean(0).sum()
  entropy = lambda d: -sum(x * np.log(x) for x in d if x > 0)
  expected = -100 * entropy(q) + 0.1 * np.mean([entropy(row) for row in p])
  _, _, loss, _ = methods.entropy_reference(costs, jnp.zeros(4, jnp.int32), jnp.zeros(4))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert int(methods.refused_entries(costs)) == int(np.sum(p < 0) + np.sum(q < 0)) == 2
  assert int(methods.refused_entries(jnp.abs(costs))) == 0
  digits_config.method = 'entropy_reference'
  shift = methods.log_normaliser(digits_config)  # -73.7: every entry negative, all p_ik > 0.
  *_, metrics = methods.make_method(digits_config)(costs, jnp.zeros(4, jnp.int32), jnp.zeros(4),
                                                   jnp.zeros(4))
  assert int(metrics['refused_entries']) == int(methods.refused_entries(costs + shift)) == 0
  digits_config.log_normaliser = False
  *_, metrics = methods.make_method(digits_config)(costs, jnp.zeros(4, jnp.int32), jnp.zeros(4),
                                                   jnp.zeros(4))
  assert int(metrics['refused_entries']) == 2
  digits_config.method = 'entropy'
  assert methods.make_method(digits_config)(costs, jnp.zeros(4, jnp.int32), jnp.zeros(4),
                                            jnp.zeros(4))[4] == {}
