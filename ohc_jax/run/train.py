"""The training loop: `train_and_evaluate(config, workdir)`, a flat loop of steps plus periodic
actions (log, guard, checkpoint, evaluate, epoch outputs, profile), each gated by `itstime`."""

import concurrent.futures
import dataclasses
import json
import os
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from ohc_jax import configuration, sharding
from ohc_jax.core import metrics, probes
from ohc_jax import data as data_lib
from ohc_jax.run import (checkpoints, experiment, interrupts, logging_utils, resume, timing,
                         workdir_lock)
from ohc_jax.errors import NonFiniteError, UsageError, WriteFailed, resumes_from, writing
from ohc_jax.run.evaluation import eval_sample, evaluate  # NonFiniteError: train.NonFiniteError too.
from ohc_jax.run.evaluation import collapse_warning


def itstime(step: int, every: int, total: Optional[int] = None) -> bool:
  """Whether an action done every `every` steps (0: never) is due after `step` steps; with
  `total`, also after the last step."""
  return bool(every) and (step % every == 0 or step == total)


@dataclasses.dataclass
class Position:
  """The loop's record beside the state: `epoch` in progress (1-based) and `step_in_epoch` of its
  steps taken (the data's order is a function of (seed, epoch), so this reproduces it), the epoch's
  loss sum, the evaluation history and the cluster -> class map of the latest evaluation."""
  epoch: int = 1
  step_in_epoch: int = 0
  loss_sum: float = 0.0
  history: list = dataclasses.field(default_factory=list)
  cluster_to_class: Optional[list] = None
  cluster_to_class_step: Optional[int] = None
  skipped_records: int = 0  # Training's stand-ins for records that did not decode, all processes.

  @classmethod
  def from_meta(cls, meta: dict, steps_per_epoch: int) -> 'Position':
    pos = cls(int(meta['epoch']), int(meta['step_in_epoch']), float(meta.get('loss_sum', 0.0)),
              list(meta.get('history', [])), meta.get('cluster_to_class'),
              meta.get('cluster_to_class_step'), int(meta.get('skipped_records', 0)))
    done = (pos.history and pos.history[-1]['epoch'] >= pos.epoch and
            not pos.history[-1].get('partial'))
    if done and pos.step_in_epoch >= steps_per_epoch:  # An epoch-end checkpoint.
      pos.epoch, pos.step_in_epoch, pos.loss_sum = pos.epoch + 1, 0, 0.0
    return pos

  def meta(self, exp, data) -> dict:
    """The checkpoint's JSON item: this record, the input description (for ohc_jax.predict) and
    the config."""
    spec = exp.spec
    return {**dataclasses.asdict(self), 'steps_per_epoch': exp.steps_per_epoch,
            'class_names': list(data.class_names), 'num_classes': int(data.num_classes),
            'input_shape': list(spec.shape), 'input_dtype': spec.dtype, 'scale': spec.scale,
            'offset': spec.offset, 'config': resume.jsonable_config(exp.config)}


def _raise_if_bad(state) -> None:
  bad = int(state.bad_step)
  if bad >= 0:
    raise NonFiniteError(f'non-finite loss, costs or gradients at step {bad}: the state is that '
                         f'of step {bad}; lower --config.learning_rate or check the input data')


def _sum_over_processes(count: int) -> int:
  """A count summed over the processes (a collective)."""
  if jax.process_count() == 1:
    return count
  return int(multihost_utils.process_allgather(np.int64(count)).sum())


def _batches(feed, step: int):
  """The training batches from global step `step` on, epoch after epoch."""
  epoch, first = divmod(step, feed.steps_per_epoch)
  while True:
    yield from feed.epoch(epoch + 1, first)
    epoch, first = epoch + 1, 0


@dataclasses.dataclass
class _Run:
  """What the loop works with besides the state, and closes at its end."""
  config: Any
  workdir: str
  data: Any
  exp: Any
  feed: Any
  ckpt: Any
  writer: Any
  bar: Any
  profile: Any
  outputs: Any

  def close(self, quiet: bool = False) -> None:
    """Closes each part; `quiet` (the run is already stopping on an error): their own errors are
    dropped, so that the first one is reported."""
    for closing in (self.bar, self.profile, self.outputs, self.ckpt, self.writer):
      try:
        closing.close()
      except Exception:  # pylint: disable=broad-except
        if not quiet:
          raise


def train_and_evaluate(config, workdir: str, overwrite: bool = False) -> dict:
  """Trains, evaluating at every epoch's end; writes config.json, metrics.jsonl, steps.jsonl,
  results.json (last: its presence marks the run finished) and timing.json into workdir.

  Checkpoints every config.checkpoint_every_steps steps and at each epoch's end; a run left
  unfinished in workdir is resumed exactly (resume.py decides). SIGTERM or SIGINT saves a
  checkpoint and raises interrupts.Interrupted. The workdir is locked for the run's life
  (workdir_lock); a failed write into it raises WriteFailed naming the step a rerun resumes from.
  """
  clock = timing.Clock()
  configuration.validate(config)
  resume.check_writable(workdir)
  with workdir_lock.WorkdirLock(workdir, workdir_lock.process_of(config)):
    run, state, pos = _start(config, workdir, overwrite, clock)
    exp, spe = run.exp, run.exp.steps_per_epoch
    start, total = (pos.epoch - 1) * spe + pos.step_in_epoch, config.num_epochs * spe
    batches, loss_sum = _batches(run.feed, start), jnp.float32(pos.loss_sum)
    try:
      with interrupts.StopOnSignal() as stop:
        processes = _Processes(stop, exp, config)
        clock.loop(True)
        for step in range(start, total):
          pos.epoch, pos.step_in_epoch = step // spe + 1, step % spe + 1
          if pos.step_in_epoch == 1:
            state, loss_sum = exp.new_epoch(state), jnp.float32(0.0)
            run.bar.new_epoch(step)
          run.profile.step(step)
          with clock('compile') if step == start else _NO_TIMER:
            state, step_metrics = exp.train_step(state, exp.to_global(processes.next(batches)))
            if step == start:
              jax.block_until_ready(state)
          loss_sum, done = loss_sum + step_metrics['loss'], step + 1
          run.bar.update(done)
          run.ckpt.poll()
          if itstime(done, config.log_every_steps):
            _log(run, state, pos, done, step_metrics, clock)
          signum = processes.meet(pos, done)
          if itstime(done, config.eval_every_steps) and not itstime(done, spe):
            _evaluate(run, state, pos, loss_sum, done, clock, partial=True)
          if itstime(done, spe):
            state = _evaluate(run, state, pos, loss_sum, done, clock)
          elif signum or itstime(done, config.checkpoint_every_steps):
            _checkpoint(run, state, pos, float(loss_sum), clock)
          if signum and done < total:
            raise interrupts.Interrupted(signum, done, checkpoints.checkpoint_dir(workdir))
        clock.loop(False)
    except BaseException as e:  # pylint: disable=broad-except  (each raised again by _close)
      _close(run, e, clock)
    _close(run, None, clock)
    return _write_results(config, workdir, run.data, pos.history, clock)


class _Processes:
  """What the processes agree on where they meet (every step in a single process; in several, at
  the steps where they log, checkpoint, evaluate or end an epoch): an input failure (raised on
  every process), a signal, and the training records skipped. A process whose input fails goes on
  with blank batches until they meet, so that none waits for it in a step's collectives."""

  def __init__(self, stop, exp, config):
    self._stop, self._config, self._failure, self._unsynced = stop, config, None, 0
    self._steps_per_epoch = exp.steps_per_epoch
    local = config.batch_size // jax.process_count()
    self._blank = {'image': np.zeros((local,) + tuple(exp.spec.shape), exp.spec.dtype),
                   'label': np.zeros(local, np.int64)}

  def next(self, batches) -> dict:
    """The next training batch of this process (blank after its input failed)."""
    if self._failure is None:
      try:
        batch = next(batches)
        self._unsynced += int(batch.pop('skipped', np.zeros(0, bool)).sum())
        return batch
      except UsageError as e:
        if jax.process_count() == 1:
          raise
        self._failure = e
    return dict(self._blank)

  def meet(self, pos, done: int) -> Optional[int]:
    """Where the processes meet after `done` steps: raises an input failure of any process, brings
    pos.skipped_records up to date (before any checkpoint or evaluation record) and returns the
    signal any process received; elsewhere None."""
    c = self._config
    if not (jax.process_count() == 1 or
            any(itstime(done, every) for every in (c.log_every_steps, c.checkpoint_every_steps,
                                                   c.eval_every_steps, self._steps_per_epoch))):
      return None
    interrupts.agree_on_failure(self._failure)  # Before any checkpoint: none past a failure.
    if c.skip_bad_records:
      pos.skipped_records += _sum_over_processes(self._unsynced)
      self._unsynced = 0
    return self._stop.agreed()


def _log(run, state, pos, done: int, step_metrics, clock) -> None:
  jax.block_until_ready(state)  # Steps dispatched ahead count as the steps' time.
  with clock('log'):
    _raise_if_bad(state)
    run.writer.write_step(done, run.bar.scalars(pos.epoch, done, step_metrics))


def _evaluate(run, state, pos, loss_sum, done: int, clock, partial: bool = False):
  """An evaluation (partial: within an epoch) and its outputs; at an epoch's end also its
  checkpoint. Returns the state (with the epoch-end updates)."""
  jax.block_until_ready(state)
  with clock('evaluate'):
    new_state, record, out = _evaluate_epoch(run.exp, state, run.data, pos,
                                             float(loss_sum) / pos.step_in_epoch,
                                             run.bar.epoch_images_per_s(done), partial=partial)
  if not partial:
    state = new_state
    _checkpoint(run, state, pos, 0.0, clock)
  with clock('epoch outputs'):
    run.writer.write_epoch(record)
    run.outputs.submit(pos, state, record, out)
  return state


def _checkpoint(run, state, pos, loss_sum: float, clock) -> None:
  jax.block_until_ready(state)
  with clock('checkpoint'):
    _raise_if_bad(state)  # Never save a state past a non-finite step.
    pos.loss_sum = loss_sum
    run.ckpt.save(state, pos.meta(run.exp, run.data))


def _close(run, error: Optional[BaseException], clock) -> None:
  """Closes the run (waiting for its last checkpoint) and raises `error`, if any; a NonFiniteError
  or WriteFailed (also one of the last checkpoint) names the last complete checkpoint, which a rerun
  resumes from."""
  try:
    with clock('finish'):
      run.close(quiet=error is not None and not isinstance(error, interrupts.Interrupted))
  except WriteFailed as e:
    error = e
  if error is None:
    return
  steps = checkpoints.committed_steps(run.workdir)
  last = max(steps) if steps else None
  if isinstance(error, WriteFailed):
    raise error.with_fix(run.workdir, resumes_from(last)) from None
  if isinstance(error, NonFiniteError):
    raise NonFiniteError(f'{error}; the last good checkpoint is '
                         f'{"none" if last is None else "step " + str(last)} in '
                         f'{checkpoints.checkpoint_dir(run.workdir)}') from None
  raise error


def _start(config, workdir: str, overwrite: bool, clock):
  """Decides between resuming and starting afresh, loads the data, builds the
  experiment and its state (restored when resuming): (_Run, state, Position)."""
  resuming = resume.decide(config, workdir, overwrite)
  sharding.maybe_initialize_distributed(config)
  lead = jax.process_index() == 0
  with clock('data'):
    data = data_lib.load(config)
  if len(data.train) < config.batch_size:
    raise UsageError(f'batch_size={config.batch_size} exceeds the {len(data.train)} training '
                     f'points: lower --config.batch_size')
  if config.warm_start and len(data.train) < config.num_clusters:
    raise UsageError(f'warm_start needs num_clusters={config.num_clusters} training points, the '
                     f'data has {len(data.train)}: lower --config.num_clusters or drop warm_start')
  with clock('build'):
    exp = experiment.build(config, experiment.InputSpec.of(data))
    resume.prepare(config, workdir, overwrite)
    feed = data_lib.train_feed(data.train, config.batch_size, config.seed,
                               jax.process_index(), jax.process_count(), config.input_threads,
                               config.input_priority == 'idle')
    state, pos = exp.init_state(), Position()
    if config.warm_start and not resuming:
      first = data_lib.epoch_permutation(len(data.train), config.seed, 1)
      rows = first[:max(config.num_clusters, config.batch_size)]
      state = exp.warm_start(state, data_lib.read_rows(data.train, rows)['image'])
    ckpt = checkpoints.Checkpointer(workdir, config.keep_checkpoints, lead=lead)
    if resuming:
      restored = resume.restore(ckpt, state, config, workdir)
      state, pos = restored.state, Position.from_meta(restored.meta, exp.steps_per_epoch)
      if lead:
        print(f'resuming from the checkpoint of step {restored.step}: epoch {pos.epoch}, step '
              f'{pos.step_in_epoch} of {exp.steps_per_epoch}', flush=True)
  writer = logging_utils.MetricWriter(workdir, enabled=lead, history=pos.history,
                                      resume_step=int(state.step) if resuming else None)
  start = (pos.epoch - 1) * exp.steps_per_epoch + pos.step_in_epoch
  run = _Run(config, workdir, data, exp, feed, ckpt, writer,
             _Bar(config, lead, exp.steps_per_epoch, start), _Profile(config, workdir, lead),
             _EpochOutputs(workdir, config, data, enabled=lead))
  return run, state, pos


def _evaluate_epoch(exp, state, data, pos, train_loss, images_per_s, partial=False):
  """An epoch's end: the evaluation, the updates it makes (Experiment.end_of_epoch), its record
  (with probes when due) and the cluster -> class map; returns (state, record, outputs). `partial`
  (config.eval_every_steps within an epoch): the evaluation and its record alone, marked so."""
  config = exp.config
  _raise_if_bad(state)
  evaluation = evaluate(exp.eval_step, state, data.eval, config, exp.mesh,
                        eval_sample(config, len(data.eval)))
  if not partial:
    state = exp.end_of_epoch(state, evaluation, data.prior)
  prior = np.exp(np.asarray(state.log_prior, np.float64))
  out, acc = evaluation.outputs, evaluation.accumulator
  record = {'epoch': pos.epoch, 'step': int(state.step), 'train_loss': train_loss,
            'train_images_per_s': images_per_s, **acc.result(prior / prior.sum()),
            **({'partial': True} if partial else {})}
  if config.skip_bad_records:
    record['skipped_records'] = {'train': pos.skipped_records, 'eval': evaluation.skipped}
  if not partial and itstime(pos.epoch, config.probe_every, config.num_epochs):
    record.update(probes.probe_accuracies(out['z'], out['label'], config.seed))
  pos.history.append(record)
  pos.cluster_to_class = metrics.table_hungarian_map(acc.table).tolist()
  pos.cluster_to_class_step = record['step']
  return state, record, out


def _write_results(config, workdir, data, history, clock) -> dict:
  best = max(history, key=lambda r: r['nmi'])
  results = {'final': history[-1], 'best_nmi': best, 'dataset': config.dataset,
             'method': config.method, 'num_train': len(data.train), 'num_eval': len(data.eval)}
  collapsed = collapse_warning(history[-1], config)
  if collapsed:
    results['warnings'] = [collapsed]
  if jax.process_index() == 0:  # Written last and atomically: its presence marks it finished.
    try:
      with writing(os.path.join(workdir, 'timing.json'), 'the timing summary'):
        print(clock.write(workdir), flush=True)
      if collapsed:
        print(f'warning: {collapsed}', file=sys.stderr, flush=True)
      path = os.path.join(workdir, 'results.json')
      with writing(path, 'the results'):
        with open(path + '.tmp', 'w') as f:
          json.dump(results, f, indent=2)
        os.replace(path + '.tmp', path)
    except WriteFailed as e:
      steps = checkpoints.committed_steps(workdir)
      raise e.with_fix(workdir, resumes_from(max(steps) if steps else None)) from None
  return results


class _NoTimer:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


_NO_TIMER = _NoTimer()


class _Bar:
  """The progress bar of process 0 (one per epoch) and the images/s of the logs."""

  def __init__(self, config, lead: bool, steps_per_epoch: int, start: int):
    self._config, self._spe, self._enabled = config, steps_per_epoch, lead and config.progress_bar
    self._bar, self._last_log = None, (start, time.time())
    self._epoch_start = (start, time.time())  # Epoch 1's time counts compiling, as it always has.

  def new_epoch(self, step: int) -> None:
    self._epoch_start = (step, time.time())

  def update(self, done: int) -> None:
    epoch, i = divmod(done - 1, self._spe)
    if self._bar is None:
      self._bar = tqdm(total=self._spe * self._config.batch_size, unit='img', unit_scale=True,
                       initial=i * self._config.batch_size, desc=f'epoch {epoch + 1}',
                       disable=not self._enabled, leave=False)
    self._bar.update(self._config.batch_size)
    if i + 1 == self._spe:
      self.close()

  def scalars(self, epoch: int, done: int, step_metrics: dict) -> dict:
    loss, now = float(step_metrics['loss']), time.time()
    if self._bar is not None:
      self._bar.set_postfix(loss=f'{loss:.4f}')
    out = {'epoch': epoch, 'loss': loss,
           'images_per_s': (done - self._last_log[0]) * self._config.batch_size /
                           (now - self._last_log[1])}
    self._last_log = (done, now)
    if 'batch_sizes' in step_metrics:  # Clusters the step's batch used.
      out['batch_clusters'] = int(np.sum(np.asarray(step_metrics['batch_sizes']) > 0))
    out.update({k: int(v) for k, v in step_metrics['method'].items()})
    return out

  def epoch_images_per_s(self, done: int) -> float:
    """Training images/s since the epoch (or the resumed run) started."""
    seconds = time.time() - self._epoch_start[1]
    return (done - self._epoch_start[0]) * self._config.batch_size / seconds

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None


class _Profile:
  """config.profile_steps > 0: a jax.profiler trace of that many steps (from the second step the
  run takes: the first compiles) on process 0, into WORKDIR/profile (TensorBoard's profile
  plugin or Perfetto reads it)."""

  def __init__(self, config, workdir: str, enabled: bool):
    self._steps, self._dir = config.profile_steps if enabled else 0, os.path.join(workdir, 'profile')
    self._first, self._on = None, False

  def step(self, step: int) -> None:
    if not self._steps:
      return
    if self._first is None:
      self._first = step + 1
    if step == self._first:
      jax.profiler.start_trace(self._dir)
      self._on = True
    elif self._on and step == self._first + self._steps:
      self.close()

  def close(self) -> None:
    if self._on:
      jax.profiler.stop_trace()
      self._on, self._steps = False, 0


class _EpochOutputs:
  """Process 0's outputs of each evaluation beside the logs: the summary line, cluster_map.json
  and (every config.plots_every_epochs epochs and at the last) the plots, drawn in a background
  thread so that training goes on meanwhile."""

  def __init__(self, workdir: str, config, data, enabled: bool):
    self._workdir, self._config, self._data, self._enabled = workdir, config, data, enabled
    self._pool = concurrent.futures.ThreadPoolExecutor(1) if enabled else None
    self._jobs = []

  def submit(self, pos, state, record: dict, outputs: dict) -> None:
    if not self._enabled:
      return
    config = self._config
    line = _summary(record, config)
    logging.info(line)
    print(line, flush=True)
    _write_cluster_map(self._workdir, pos, self._data)
    if (not record.get('partial') and
        itstime(pos.epoch, config.plots_every_epochs, config.num_epochs)):
      prior = np.exp(np.asarray(jax.device_get(state.log_prior), np.float64))
      centroids = np.asarray(jax.device_get(state.params['centroids']))
      images = data_lib.sample_images(self._data.eval,
                                      eval_sample(config, len(self._data.eval)))
      self._jobs.append(self._pool.submit(_make_plots, self._workdir, config, list(pos.history),
                                          outputs, images, self._data.class_names,
                                          prior / prior.sum(), centroids))

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=True)
      self._pool = None


def _summary(m: dict, config) -> str:
  return (f'epoch {m["epoch"]}/{config.num_epochs}'
          f'{"  step " + str(m["step"]) if m.get("partial") else ""}  loss {m["train_loss"]:.4f}  acc {m["acc"]:.4f}  '
          f'nmi {m["nmi"]:.4f}  ari {m["ari"]:.4f}  kl* {m["kl_star"]:.4f}  '
          f'clusters {m["num_nonempty"]}/{config.num_clusters}  '
          f'{m["train_images_per_s"]:.0f} img/s' +
          ('  skipped {train} training, {eval} evaluation records'.format(**m['skipped_records'])
           if any(m.get('skipped_records', {}).values()) else ''))


def _write_cluster_map(workdir: str, pos, data) -> None:
  """WORKDIR/cluster_map.json: the Hungarian cluster -> class map of the latest evaluation."""
  names = list(data.class_names)
  mapping = pos.cluster_to_class
  out = {'step': pos.cluster_to_class_step, 'epoch': pos.epoch, 'cluster_to_class': mapping,
         'cluster_to_class_name': [names[c] if 0 <= c < len(names) else None for c in mapping]
                                  if names else None,
         'class_names': names}
  path = os.path.join(workdir, 'cluster_map.json')
  with writing(path, 'the cluster map'):
    with open(path + '.tmp', 'w') as f:
      json.dump(out, f, indent=2)
    os.replace(path + '.tmp', path)


def _make_plots(workdir: str, config, history, outputs, images, class_names, prior,
                centroids) -> None:
  """The PNGs of ohc_jax.run.plots from the evaluation's outputs kept and their images; a failure
  only warns (python -m ohc_jax.report redoes them)."""
  from ohc_jax.run import plots
  try:
    plots.make_all(os.path.join(workdir, 'plots'), history=history, prior=prior, outputs=outputs,
                   labels=outputs['label'], images=images, num_clusters=config.num_clusters,
                   class_names=class_names, centroids=centroids, seed=config.seed)
  except Exception as e:  # pylint: disable=broad-except
    print(f'warning: plots failed ({type(e).__name__}: {e}); python -m ohc_jax.report '
          f'{workdir} makes them', file=sys.stderr)
