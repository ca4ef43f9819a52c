"""The jitted train and evaluation steps: pure functions of (state, batch)."""

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from ohc_jax import sharding
from ohc_jax.core import assign, imbalance, methods
from ohc_jax.core.costs import param_costs
from ohc_jax.models.encoders import make_decoder, preprocess


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves))


def _per_device(method, mesh):
  """Runs the method on each device's shard of the batch on its own."""
  def local(costs, counts, duals, log_prior):
    labels, new_counts, loss, new_duals, metrics = method(costs, counts, duals, log_prior)
    return (labels, counts + jax.lax.psum(new_counts - counts, 'data'),
            jax.lax.pmean(loss, 'data'), jax.lax.pmean(new_duals, 'data'),
            jax.lax.psum(metrics, 'data'))
  return jax.shard_map(local, mesh=mesh, in_specs=(P('data'), P(), P(), P()),
                       out_specs=(P('data'), P(), P(), P(), P()), check_vma=False)


def make_train_step(config, model, tx, method, mesh, scale: float, offset: float,
                    steps_per_epoch: int = 0):
  """`(state, batch) -> (state, metrics)`, jitted over the mesh with the state donated; metrics:
  the step's loss, labels, batch_sizes and the method's own counts ('method', see make_method).

  A step whose loss, costs or gradients are not finite changes nothing but `state.bad_step`, and
  every later step is then skipped: the caller reads `bad_step` and stops with the step's number.

  `ckm` (which needs steps_per_epoch): loss = reconstruction + w x clustering term, w = 0 for its
  first methods.ckm_pretrain_steps steps and CKM_CLUSTER_WEIGHT after (read from state.step, so one
  compiled step serves both phases and a resumed run); the decoder is held at its initial
  parameters, as the reference never steps its optimizer (its dec_opt, train.py:98 at 37a5908).
  """
  if config.assignment_scope == 'device':
    method = _per_device(method, mesh)
  ckm = config.method == 'ckm'
  if ckm and steps_per_epoch < 1:
    raise ValueError('method ckm needs steps_per_epoch for its pretraining phase')
  pretrain_steps = methods.ckm_pretrain_steps(config, steps_per_epoch) if ckm else 0

  def step(state, batch):
    x = preprocess(batch['image'], scale, offset)
    counts_in = state.counts if config.keep_counts else jnp.zeros_like(state.counts)
    log_prior = imbalance.cost_log_prior(config, state.log_prior)

    def loss_fn(params):
      z, new_vars = model.apply({'params': params['encoder'], 'batch_stats': state.batch_stats},
                                x, train=True, mutable=['batch_stats'])
      costs = param_costs(z, params, config.sigma, log_prior)
      labels, counts, loss, duals, method_metrics = method(costs, counts_in, state.duals,
                                                           log_prior)
      if ckm:
        decoder = make_decoder(config, x.shape[1:])
        decode = lambda v: decoder.apply({'params': jax.lax.stop_gradient(params['decoder'])}, v)
        key = jax.random.fold_in(jax.random.key(config.seed), state.step)
        weight = jnp.where(state.step < pretrain_steps, 0.0, methods.CKM_CLUSTER_WEIGHT)
        loss = methods.ckm_reconstruction(decode, params['centroids'], costs, x, key) + weight * loss
      return loss, (labels, counts, duals, new_vars['batch_stats'], costs, method_metrics)

    (loss, (labels, counts, duals, batch_stats, costs, method_metrics)), grads = (
        jax.value_and_grad(loss_fn, has_aux=True)(state.params))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state, counts=counts, duals=duals)
    finite = jnp.isfinite(loss) & _all_finite(costs) & _all_finite(grads)
    good = finite & (state.bad_step < 0)
    new = jax.tree.map(lambda a, b: jnp.where(good, a, b), new, state)
    bad = jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step)
    metrics = {'loss': loss, 'labels': labels,
               'batch_sizes': jnp.bincount(labels, length=config.num_clusters),
               'method': method_metrics}
    return new.replace(bad_step=bad), metrics

  rep, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  return jax.jit(step, in_shardings=(rep, data),
                 out_shardings=(rep, {'loss': rep, 'labels': data, 'batch_sizes': rep,
                                      'method': rep}),
                 donate_argnums=0)


def make_eval_step(config, model, mesh, scale: float, offset: float):
  """`(state, batch) -> {'cluster', 'cost', 'soft', 'z'}`: point-wise argmin, the paper's inference,
  of the costs training assigns with (the prior in them per config.prior_scope; the reference's
  in-place prior shift of its cost table reaches its evaluation argmin too).

  With config.constrained_eval also 'constrained': combination assignment of the batch's rows that
  batch['valid'] marks (all when absent; the others are given the largest costs, so go last)."""
  def step(state, batch):
    x = preprocess(batch['image'], scale, offset)
    z = model.apply({'params': state.params['encoder'], 'batch_stats': state.batch_stats},
                    x, train=False)
    costs = param_costs(z, state.params, config.sigma,
                        imbalance.cost_log_prior(config, state.log_prior))
    cluster = jnp.argmin(costs, axis=1)
    out = {'cluster': cluster, 'cost': jnp.min(costs, axis=1),
           'soft': jax.nn.softmax(-costs, axis=1), 'z': z}
    if config.constrained_eval:
      valid = batch.get('valid', jnp.ones(costs.shape[:1], bool))
      # Padding costs more than any real pair plus its largest penalty, log(B + 1) < 100.
      costs = jnp.where(valid[:, None], costs, jnp.max(costs) + 100.0)
      out['constrained'] = assign.combination_assign(costs, impl=config.assign_impl)[0]
    return out

  data = sharding.batch_sharded(mesh)
  return jax.jit(step, in_shardings=(sharding.replicated(mesh), data), out_shardings=data)

