"""Checkpoints of a run (Orbax); the rules for a run's workdir are in workdir.py.

A checkpoint is a directory `WORKDIR/checkpoints/<step>/` written by Orbax's `CheckpointManager`
(atomically: into a temporary directory renamed on commit) with two items:

- `state`: the whole `TrainState` pytree (parameters, BatchNorm statistics, optimizer state, cluster
  counts, log prior, step, bad_step and whatever else the state holds);
- `meta`: JSON: the position in the data (`epoch` in progress and `step_in_epoch` steps of it taken;
  the order of the data is a function of (seed, epoch), so this reproduces it), the epoch's running
  loss sum, the metrics `history` so far, the cluster -> class map of the last evaluation, the input
  shape and normalisation (for `ohc_jax.predict`) and the config.

After Orbax commits a checkpoint, process 0 adds `ohc_digest.json` (size and SHA-256 of every file),
so that a truncated or corrupted checkpoint is recognised before it is read.
"""

import dataclasses
import hashlib
import json
import os
import sys
from typing import Any, Optional

from ohc_jax.errors import UsageError

CHECKPOINT_DIR = 'checkpoints'
QUARANTINE_DIR = 'corrupt_checkpoints'  # Unusable checkpoints are moved here, never deleted.
DIGEST = 'ohc_digest.json'

class CheckpointError(UsageError):
  """No usable checkpoint where one is needed."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINT_DIR)


def committed_steps(workdir: str) -> list[int]:
  """Steps of the committed checkpoints on disk (Orbax's temporary directories excluded), sorted."""
  root = checkpoint_dir(workdir)
  if not os.path.isdir(root):
    return []
  return sorted(int(name) for name in os.listdir(root)
                if name.isdigit() and os.path.isdir(os.path.join(root, name)))


def jsonable_config(config) -> dict:
  return json.loads(config.to_json_best_effort())


# ---------------------------------------------------------------------------------------------
# Integrity digests.


def _files_under(directory: str) -> list[str]:
  out = []
  for root, _, files in os.walk(directory):
    for name in files:
      rel = os.path.relpath(os.path.join(root, name), directory)
      if rel != DIGEST:
        out.append(rel)
  return sorted(out)


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def write_digest(step_dir: str) -> None:
  digest = {rel: [os.path.getsize(os.path.join(step_dir, rel)), _sha256(os.path.join(step_dir, rel))]
            for rel in _files_under(step_dir)}
  tmp = os.path.join(step_dir, DIGEST + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(digest, f)
  os.replace(tmp, os.path.join(step_dir, DIGEST))


def verify_digest(step_dir: str) -> Optional[str]:
  """None if the checkpoint matches its digest (or has none yet); else what is wrong."""
  path = os.path.join(step_dir, DIGEST)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      digest = json.load(f)
  except (OSError, ValueError):
    return f'{DIGEST} unreadable'
  for rel, (size, sha) in sorted(digest.items()):
    full = os.path.join(step_dir, rel)
    if not os.path.exists(full):
      return f'{rel} missing'
    if os.path.getsize(full) != size:
      return f'{rel} truncated or changed ({os.path.getsize(full)} bytes, expected {size})'
    if _sha256(full) != sha:
      return f'{rel} corrupted (checksum mismatch)'
  return None


# ---------------------------------------------------------------------------------------------
# Saving and restoring.


@dataclasses.dataclass
class Restored:
  state: Any
  meta: dict
  step: int


class Checkpointer:
  """Orbax CheckpointManager over WORKDIR/checkpoints: keeps the last `keep` checkpoints.

  Every process must call save/restore (Orbax coordinates multi-process saves); only process 0
  writes the digests and moves unusable checkpoints aside.
  """

  def __init__(self, workdir: str, keep: int = 3, *, lead: bool = True, read_only: bool = False):
    import orbax.checkpoint as ocp
    self._ocp = ocp
    self.workdir = workdir
    self.directory = os.path.abspath(checkpoint_dir(workdir))
    self._lead = lead
    self._read_only = read_only
    self._pending: Optional[int] = None
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
            create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only))

  # -- saving --

  def _finish_pending(self) -> None:
    """Waits for the async save in flight and writes its digest."""
    self._manager.wait_until_finished()
    if self._pending is not None and self._lead:
      step_dir = os.path.join(self.directory, str(self._pending))
      if os.path.isdir(step_dir):
        write_digest(step_dir)
    self._pending = None

  def save(self, state, meta: dict) -> int:
    """Saves (asynchronously) the state at its step with its JSON meta; returns the step."""
    ocp = self._ocp
    step = int(state.step)
    self._finish_pending()
    if step in self._manager.all_steps():
      # Only reachable if the same step is saved twice: keep the first.
      return step
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)))
    self._pending = step
    return step

  def poll(self) -> None:
    """Process 0 writes the digest of the last save as soon as Orbax has committed it (a cheap
    check; no collective, so other processes may skip it)."""
    if self._lead and self._pending is not None and not self._manager.is_saving_in_progress():
      step_dir = os.path.join(self.directory, str(self._pending))
      if os.path.isdir(step_dir):
        write_digest(step_dir)
      self._pending = None

  def wait(self) -> None:
    self._finish_pending()

  def close(self) -> None:
    self._finish_pending()
    self._manager.close()

  def latest_step(self) -> Optional[int]:
    steps = self._manager.all_steps()
    return max(steps) if steps else None

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def read_meta(self, step: int) -> Optional[dict]:
    """The JSON item of a checkpoint alone, or None if it does not read."""
    ocp = self._ocp
    try:
      return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception:  # pylint: disable=broad-except
      return None

  # -- restoring --

  def _restore_step(self, step: int, template):
    ocp = self._ocp
    problem = verify_digest(os.path.join(self.directory, str(step)))
    if problem:
      raise ValueError(problem)
    import jax
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      state = restored.state
    except ValueError as e:
      if 'tree structures do not match' not in str(e):
        raise
      restored, state = self._restore_by_fields(step, template)
    meta = restored.meta
    if not isinstance(meta, dict) or 'epoch' not in meta:
      raise ValueError('meta item unreadable')
    if int(state.step) != step:
      raise ValueError(f'holds step {int(state.step)}, not {step}')
    return state, meta

  def _restore_by_fields(self, step: int, template):
    """A checkpoint written by a version of the code whose TrainState had other fields: restores
    the fields both have; fields the checkpoint lacks keep the template's (initial) values."""
    import jax
    from etils import epath
    ocp = self._ocp
    saved = set(ocp.StandardCheckpointHandler().metadata(
        epath.Path(self.directory) / str(step) / 'state').keys())
    fields = [f.name for f in dataclasses.fields(template)]
    common = [f for f in fields if f in saved]
    abstract = {f: jax.tree.map(ocp.utils.to_shape_dtype_struct, getattr(template, f))
                for f in common}
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract, strict=False), meta=ocp.args.JsonRestore()))
    missing, extra = sorted(set(fields) - saved), sorted(saved - set(fields))
    self._warn(f'the checkpoint of step {step} was written by another version of the state: '
               f'{", ".join(missing) or "no field"} initialised afresh'
               f'{"; " + ", ".join(extra) + " ignored" if extra else ""}')
    return restored, template.replace(**dict(restored.state))

  def restore(self, template, *, step: Optional[int] = None, quarantine: bool = False) -> Restored:
    """The latest usable checkpoint (or `step`), restored with the structure and shardings of
    `template`. An unusable one gives a warning and the one before it is tried; with `quarantine`
    (the trainer), unusable checkpoints newer than the restored one are moved to
    WORKDIR/corrupt_checkpoints (never deleted). Raises CheckpointError if none is usable."""
    self._finish_pending()
    steps = sorted(self._manager.all_steps(), reverse=True)
    if step is not None:
      if step not in steps:
        raise CheckpointError(f'no checkpoint of step {step} in {self.directory}: there are '
                              f'{", ".join(map(str, sorted(steps))) or "none"}')
      steps = [step]
    if not steps:
      raise CheckpointError(f'no checkpoint in {self.directory}: train a model there first '
                            f'(python -m ohc_jax.main --workdir={self.workdir})')
    failures = []
    for s in steps:
      try:
        state, meta = self._restore_step(s, template)
      except Exception as e:  # pylint: disable=broad-except
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        failures.append((s, reason))
        self._warn(f'checkpoint {os.path.join(self.directory, str(s))} is unusable ({reason}); '
                   f'trying the one before it')
        continue
      if failures and quarantine and not self._read_only:
        self._quarantine([f for f, _ in failures])
      return Restored(state, meta, s)
    listed = '; '.join(f'step {s}: {r}' for s, r in failures)
    raise CheckpointError(f'no usable checkpoint in {self.directory} ({listed}); nothing was '
                          f'deleted: pass --overwrite to start afresh')

  def _warn(self, message: str) -> None:
    if self._lead:
      print(f'warning: {message}', file=sys.stderr, flush=True)

  def _quarantine(self, steps) -> None:
    if self._lead:
      target_root = os.path.join(self.workdir, QUARANTINE_DIR)
      os.makedirs(target_root, exist_ok=True)
      for s in steps:
        target = os.path.join(target_root, str(s))
        n = 1
        while os.path.exists(target):
          target, n = os.path.join(target_root, f'{s}.{n}'), n + 1
        os.replace(os.path.join(self.directory, str(s)), target)
        self._warn(f'moved the unusable checkpoint of step {s} to {target}')
    _barrier('ohc_jax_quarantine')
    self._manager.reload()


def _barrier(name: str) -> None:
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


# ---------------------------------------------------------------------------------------------
# Position in the run.


@dataclasses.dataclass
class Position:
  """Where training stands: `epoch` in progress (1-based), `step_in_epoch` of its steps taken."""
  epoch: int = 1
  step_in_epoch: int = 0
  loss_sum: float = 0.0
  history: list = dataclasses.field(default_factory=list)
  cluster_to_class: Optional[list] = None
  cluster_to_class_step: Optional[int] = None

  @classmethod
  def from_meta(cls, meta: dict, steps_per_epoch: int) -> 'Position':
    pos = cls(int(meta['epoch']), int(meta['step_in_epoch']), float(meta.get('loss_sum', 0.0)),
              list(meta.get('history', [])), meta.get('cluster_to_class'),
              meta.get('cluster_to_class_step'))
    done = pos.history and pos.history[-1]['epoch'] >= pos.epoch
    if done and pos.step_in_epoch >= steps_per_epoch:  # An epoch-end checkpoint.
      pos.epoch, pos.step_in_epoch, pos.loss_sum = pos.epoch + 1, 0, 0.0
    return pos


def make_meta(config, pos: Position, *, steps_per_epoch: int, data, input_shape, input_dtype) -> dict:
  """The JSON item of a checkpoint."""
  return {
      'epoch': pos.epoch,
      'step_in_epoch': pos.step_in_epoch,
      'steps_per_epoch': steps_per_epoch,
      'loss_sum': float(pos.loss_sum),
      'history': pos.history,
      'cluster_to_class': pos.cluster_to_class,
      'cluster_to_class_step': pos.cluster_to_class_step,
      'class_names': list(getattr(data, 'class_names', ()) or ()),
      'num_classes': int(getattr(data, 'num_classes', 0) or 0),
      'input_shape': [int(d) for d in input_shape],
      'input_dtype': str(input_dtype),
      'scale': float(data.scale),
      'offset': float(data.offset),
      'config': jsonable_config(config),
  }
