"""The training loop: `train_and_evaluate(config, workdir)`."""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from ohc_jax import (checkpoints, configuration, costs, imbalance, input_pipeline, interrupts,
                     logging_utils, metrics, models, sharding, probes, steps)
from ohc_jax import workdir as workdir_rules
from ohc_jax.errors import NonFiniteError, UsageError  # NonFiniteError: train.NonFiniteError too.
from ohc_jax.methods import make_method
from ohc_jax.train_state import create_train_state, make_optimizer


def evaluate(eval_step, state, split, config, mesh) -> dict:
  """Point-wise argmin labels over a split (combination assignment batch by batch with
  config.constrained_eval), gathered to every process as NumPy arrays."""
  outputs = []
  for batch, valid in input_pipeline.eval_batches(split, config.eval_batch_size,
                                                  jax.process_index(), jax.process_count()):
    outputs.append((eval_step(state, sharding.to_global(batch, mesh)), valid))
  gathered = [(multihost_utils.process_allgather(out, tiled=True), valid)
              for out, valid in outputs]
  outputs = {key: np.concatenate([out[key][:valid] for out, valid in gathered])
             for key in gathered[0][0]}
  if 'constrained' in outputs:
    outputs['cluster'] = outputs.pop('constrained')
  return outputs


def epoch_metrics(outputs: dict, split, log_prior) -> dict:
  prior = np.exp(np.asarray(log_prior, np.float64))
  return metrics.clustering_metrics(split.labels, outputs['cluster'], outputs['soft'].sum(0),
                                    prior / prior.sum())


def _summary(epoch, config, loss, img_s, m) -> str:
  return (f'epoch {epoch}/{config.num_epochs}  loss {loss:.4f}  acc {m["acc"]:.4f}  '
          f'nmi {m["nmi"]:.4f}  ari {m["ari"]:.4f}  kl* {m["kl_star"]:.4f}  '
          f'clusters {m["num_nonempty"]}/{config.num_clusters}  {img_s:.0f} img/s')


def _raise_if_bad(state) -> None:
  bad = int(state.bad_step)
  if bad >= 0:
    raise NonFiniteError(f'non-finite loss, costs or gradients at step {bad}: the state is that '
                         f'of step {bad}; lower --config.learning_rate or check the input data')


def train_and_evaluate(config, workdir: str, overwrite: bool = False) -> dict:
  """Trains and evaluates every epoch; writes config.json, metrics.jsonl and results.json.

  Checkpoints go to WORKDIR/checkpoints every config.checkpoint_every_steps steps and at each
  epoch's end; an unfinished run in workdir is resumed from its latest usable checkpoint, exactly
  (checkpoints.py; workdir.py decides between resuming, starting afresh and refusing). SIGTERM or
  SIGINT saves a checkpoint and raises interrupts.Interrupted.
  """
  configuration.validate(config)
  resume = workdir_rules.check_workdir(config, workdir, overwrite)
  sharding.maybe_initialize_distributed(config)
  mesh = sharding.make_mesh(config)
  data = input_pipeline.load(config)
  if len(data.train) < config.batch_size:
    raise UsageError(f'batch_size={config.batch_size} exceeds the {len(data.train)} training '
                     f'points: lower --config.batch_size')
  lead = jax.process_index() == 0
  if lead:
    if overwrite:
      workdir_rules.clear_outputs(workdir)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('ohc_jax_workdir_ready')

  model = models.make_encoder(config)
  tx = make_optimizer(config)
  rep = sharding.replicated(mesh)
  state = jax.device_put(create_train_state(config, model, tx, data.train.images.shape[1:],
                                            jax.random.key(config.seed)), rep)
  feed = input_pipeline.TrainFeed(data.train, config.batch_size, config.seed,
                                  jax.process_index(), jax.process_count())
  train_step = steps.make_train_step(config, model, tx, make_method(config), mesh, data.scale,
                                     data.offset, steps_per_epoch=feed.steps_per_epoch)
  eval_step = steps.make_eval_step(config, model, mesh, data.scale, data.offset)
  if config.warm_start and not resume:
    state = _warm_start(config, model, state, data, rep)

  ckpt = checkpoints.Checkpointer(workdir, config.keep_checkpoints, lead=lead)
  pos = checkpoints.Position()
  if resume:
    restored = ckpt.restore(state, quarantine=True)
    workdir_rules.refuse_if_config_differs(restored.meta['config'], config, workdir)
    state, pos = restored.state, checkpoints.Position.from_meta(restored.meta,
                                                                feed.steps_per_epoch)
    if lead:
      print(f'resuming from the checkpoint of step {restored.step}: epoch {pos.epoch}, step '
            f'{pos.step_in_epoch} of {feed.steps_per_epoch}', flush=True)
  writer = logging_utils.MetricWriter(workdir, enabled=lead, history=pos.history,
                                      resume_step=int(state.step) if resume else None)
  history = pos.history

  def save(epoch, step_in_epoch, loss_sum):
    _raise_if_bad(state)  # Never save a state past a non-finite step.
    pos.epoch, pos.step_in_epoch, pos.loss_sum = epoch, step_in_epoch, float(loss_sum)
    ckpt.save(state, checkpoints.make_meta(
        config, pos, steps_per_epoch=feed.steps_per_epoch, data=data,
        input_shape=data.train.images.shape[1:], input_dtype=data.train.images.dtype))

  try:
    with interrupts.StopOnSignal() as stop:
      for epoch in range(pos.epoch, config.num_epochs + 1):
        first = pos.step_in_epoch if epoch == pos.epoch else 0  # > 0: resuming mid-epoch.
        if first == 0:
          state = state.replace(counts=jax.device_put(np.zeros(config.num_clusters, np.int32),
                                                      rep))
        bar = tqdm(total=feed.steps_per_epoch * config.batch_size, unit='img', unit_scale=True,
                   initial=first * config.batch_size, desc=f'epoch {epoch}',
                   disable=not (lead and config.progress_bar), leave=False)
        start = last_log = time.time()
        loss_sum = jnp.asarray(pos.loss_sum if first else 0.0, jnp.float32)
        for i, batch in enumerate(feed.epoch(epoch, first), start=first):
          state, step_metrics = train_step(state, sharding.to_global(batch, mesh))
          loss_sum = loss_sum + step_metrics['loss']
          bar.update(config.batch_size)
          ckpt.poll()
          done, global_step = i + 1, (epoch - 1) * feed.steps_per_epoch + i + 1
          if global_step % config.log_every_steps == 0:
            _raise_if_bad(state)
            loss, now = float(step_metrics['loss']), time.time()
            bar.set_postfix(loss=f'{loss:.4f}')
            scalars = {'epoch': epoch, 'loss': loss,
                       'images_per_s': config.log_every_steps * config.batch_size / (now - last_log)}
            if 'batch_sizes' in step_metrics:  # Clusters the step's batch used.
              scalars['batch_clusters'] = int(np.sum(np.asarray(step_metrics['batch_sizes']) > 0))
            scalars.update({k: int(v) for k, v in step_metrics['method'].items()})
            writer.write_step(global_step, scalars)
            last_log = now
          signum = stop.agreed() if (jax.process_count() == 1 or
                                     global_step % config.log_every_steps == 0) else None
          every = config.checkpoint_every_steps
          if done < feed.steps_per_epoch and (signum or (every and global_step % every == 0)):
            save(epoch, done, loss_sum)
            if signum:
              raise interrupts.Interrupted(signum, global_step, workdir)
        _raise_if_bad(state)
        train_loss = float(loss_sum) / feed.steps_per_epoch
        train_time = time.time() - start
        bar.close()
        outputs = evaluate(eval_step, state, data.eval, config, mesh)
        log_prior = np.asarray(state.log_prior)
        if data.prior is not None:  # Matched per prior_matching; in the costs from epoch 2 on.
          log_prior = imbalance.matched_log_prior(data.prior, outputs['cluster'], data.eval.labels,
                                                  config.prior_matching)
          state = state.replace(log_prior=jax.device_put(log_prior, rep))
        if config.covariance == 'estimated':  # From this evaluation's encodings and clusters.
          precision, why = costs.estimate_precisions(outputs['z'], outputs['cluster'],
                                                        config.num_clusters, config.sigma)
          if precision is None:
            logging.warning('epoch %d: covariances not re-estimated: %s', epoch, why)
          else:
            state = state.replace(params={**state.params,
                                          'precision': jax.device_put(precision, rep)})
        record = {'epoch': epoch, 'step': int(state.step), 'train_loss': train_loss,
                  'train_images_per_s': ((feed.steps_per_epoch - first) * config.batch_size /
                                         train_time),
                  **epoch_metrics(outputs, data.eval, log_prior)}
        if config.probe_every and (epoch % config.probe_every == 0 or epoch == config.num_epochs):
          record.update(probes.probe_accuracies(outputs['z'], data.eval.labels, config.seed))
        history.append(record)
        pos.cluster_to_class = metrics.hungarian_map(data.eval.labels, outputs['cluster'],
                                                     config.num_clusters).tolist()
        pos.cluster_to_class_step = record['step']
        save(epoch, feed.steps_per_epoch, 0.0)
        writer.write_epoch(record)
        if lead:
          logging.info(_summary(epoch, config, train_loss, record['train_images_per_s'], record))
          print(_summary(epoch, config, train_loss, record['train_images_per_s'], record),
                flush=True)
          _write_cluster_map(workdir, pos, data)
          every = config.plots_every_epochs
          if every and (epoch % every == 0 or epoch == config.num_epochs):
            _make_plots(workdir, config, state, history, outputs, data)
        signum = stop.agreed()
        if signum and epoch < config.num_epochs:
          raise interrupts.Interrupted(signum, record['step'], workdir)
  except NonFiniteError as e:
    ckpt.wait()
    last = ckpt.latest_step()
    raise NonFiniteError(f'{e}; the last good checkpoint is '
                         f'{"step " + str(last) if last is not None else "none"} in '
                         f'{checkpoints.checkpoint_dir(workdir)}') from None
  finally:
    ckpt.close()
    writer.close()

  best = max(history, key=lambda r: r['nmi'])
  results = {'final': history[-1], 'best_nmi': best, 'dataset': config.dataset,
             'method': config.method, 'num_train': len(data.train), 'num_eval': len(data.eval)}
  if lead:  # Written last and atomically: its presence marks the run finished.
    with open(os.path.join(workdir, 'results.json.tmp'), 'w') as f:
      json.dump(results, f, indent=2)
    os.replace(os.path.join(workdir, 'results.json.tmp'), os.path.join(workdir, 'results.json'))
  return results


def _warm_start(config, model, state, data, rep):
  """Centroids := encodings of the first K points of the first batch, BatchNorm using that batch's
  statistics as in training (the reference encodes them in eval mode, with BatchNorm's initial
  running statistics, which puts all the centroids in a small region away from the training
  encodings, and its optimiser then never updates them: docs/fidelity.md)."""
  k = config.num_clusters
  if len(data.train) < k:
    raise UsageError(f'warm_start needs num_clusters={k} training points, the data has '
                     f'{len(data.train)}: lower --config.num_clusters or drop warm_start')
  first = input_pipeline.epoch_permutation(len(data.train), config.seed, 1)
  x = models.preprocess(data.train.images[first[:max(k, config.batch_size)]], data.scale,
                        data.offset)
  z, _ = model.apply({'params': state.params['encoder'], 'batch_stats': state.batch_stats}, x,
                     train=True, mutable=['batch_stats'])
  return state.replace(params={**state.params, 'centroids': jax.device_put(z[:k], rep)})


def _write_cluster_map(workdir: str, pos, data) -> None:
  """WORKDIR/cluster_map.json: the Hungarian cluster -> class map of the latest evaluation."""
  names = list(data.class_names)
  mapping = pos.cluster_to_class
  out = {'step': pos.cluster_to_class_step, 'epoch': pos.epoch, 'cluster_to_class': mapping,
         'cluster_to_class_name': [names[c] if 0 <= c < len(names) else None for c in mapping]
                                  if names else None,
         'class_names': names}
  with open(os.path.join(workdir, 'cluster_map.json.tmp'), 'w') as f:
    json.dump(out, f, indent=2)
  os.replace(os.path.join(workdir, 'cluster_map.json.tmp'), os.path.join(workdir, 'cluster_map.json'))


def _make_plots(workdir: str, config, state, history, outputs, data) -> None:
  """The PNGs of ohc_jax.plots; a failure only warns (python -m ohc_jax.report redoes them)."""
  from ohc_jax import plots
  prior = np.exp(np.asarray(jax.device_get(state.log_prior), np.float64))
  try:
    plots.make_all(os.path.join(workdir, 'plots'), history=history, prior=prior / prior.sum(),
                   outputs=outputs, labels=data.eval.labels, images=data.eval.images,
                   num_clusters=config.num_clusters, class_names=data.class_names,
                   centroids=np.asarray(jax.device_get(state.params['centroids'])),
                   seed=config.seed)
  except Exception as e:  # pylint: disable=broad-except
    print(f'warning: plots failed ({type(e).__name__}: {e}); python -m ohc_jax.report '
          f'{workdir} makes them', file=sys.stderr)
