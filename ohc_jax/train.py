"""The training loop: `train_and_evaluate(config, workdir)`."""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from ohc_jax import configuration, input_pipeline, metrics, models, parallel, steps
from ohc_jax.errors import UsageError
from ohc_jax.methods import make_method
from ohc_jax.train_state import create_train_state, make_optimizer


class NonFiniteError(RuntimeError):
  """Training produced a non-finite loss, cost or gradient."""


def check_workdir(workdir: str, overwrite: bool) -> None:
  """Refuses a workdir that already holds a finished run, unless overwriting."""
  if os.path.exists(os.path.join(workdir, 'results.json')) and not overwrite:
    raise UsageError(f'{workdir} already holds a finished run (results.json): choose another '
                     f'--workdir, or pass --overwrite to replace it')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UsageError(f'--workdir={workdir} is a file, not a directory: choose another --workdir')


def evaluate(eval_step, state, split, config, mesh) -> dict:
  """Point-wise argmin labels over a split, gathered to every process as NumPy arrays."""
  outputs = []
  for batch, valid in input_pipeline.eval_batches(split, config.eval_batch_size,
                                                  jax.process_index(), jax.process_count()):
    outputs.append((eval_step(state, parallel.to_global(batch, mesh)), valid))
  gathered = [(multihost_utils.process_allgather(out, tiled=True), valid)
              for out, valid in outputs]
  return {key: np.concatenate([out[key][:valid] for out, valid in gathered])
          for key in gathered[0][0]}


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
  """Trains and evaluates every epoch; writes config.json, metrics.jsonl and results.json."""
  configuration.validate(config)
  check_workdir(workdir, overwrite)
  parallel.maybe_initialize_distributed(config)
  mesh = parallel.make_mesh(config)
  data = input_pipeline.load(config)
  if len(data.train) < config.batch_size:
    raise UsageError(f'batch_size={config.batch_size} exceeds the {len(data.train)} training '
                     f'points: lower --config.batch_size')
  lead = jax.process_index() == 0
  if lead:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
    open(os.path.join(workdir, 'metrics.jsonl'), 'w').close()

  model = models.make_encoder(config)
  tx = make_optimizer(config)
  rep = parallel.replicated(mesh)
  state = jax.device_put(create_train_state(config, model, tx, data.train.images.shape[1:],
                                            jax.random.key(config.seed)), rep)
  train_step = steps.make_train_step(config, model, tx, make_method(config), mesh, data.scale,
                                     data.offset)
  eval_step = steps.make_eval_step(config, model, mesh, data.scale, data.offset)
  feed = input_pipeline.TrainFeed(data.train, config.batch_size, config.seed,
                                  jax.process_index(), jax.process_count())

  history = []
  for epoch in range(1, config.num_epochs + 1):
    state = state.replace(counts=jax.device_put(np.zeros(config.num_clusters, np.int32), rep))
    bar = tqdm(total=feed.steps_per_epoch * config.batch_size, unit='img', unit_scale=True,
               desc=f'epoch {epoch}', disable=not (lead and config.progress_bar), leave=False)
    start, loss_sum = time.time(), jnp.zeros(())
    for i, batch in enumerate(feed.epoch(epoch)):
      state, step_metrics = train_step(state, parallel.to_global(batch, mesh))
      loss_sum = loss_sum + step_metrics['loss']
      bar.update(config.batch_size)
      if (i + 1) % config.log_every_steps == 0:
        bar.set_postfix(loss=f'{float(step_metrics["loss"]):.4f}')
        _raise_if_bad(state)
    _raise_if_bad(state)
    train_loss = float(loss_sum) / feed.steps_per_epoch
    train_time = time.time() - start
    bar.close()
    outputs = evaluate(eval_step, state, data.eval, config, mesh)
    record = {'epoch': epoch, 'step': int(state.step), 'train_loss': train_loss,
              'train_images_per_s': feed.steps_per_epoch * config.batch_size / train_time,
              **epoch_metrics(outputs, data.eval, state.log_prior)}
    history.append(record)
    if lead:
      with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
        f.write(json.dumps(record) + '\n')
      logging.info(_summary(epoch, config, train_loss, record['train_images_per_s'], record))
      print(_summary(epoch, config, train_loss, record['train_images_per_s'], record), flush=True)

  best = max(history, key=lambda r: r['nmi'])
  results = {'final': history[-1], 'best_nmi': best, 'dataset': config.dataset,
             'method': config.method, 'num_train': len(data.train), 'num_eval': len(data.eval)}
  if lead:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  return results
