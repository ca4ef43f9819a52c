"""A thin wrapper of Orbax's CheckpointManager over WORKDIR/checkpoints, adding what Orbax lacks:
an integrity digest per checkpoint, and falling back from an unusable checkpoint to the one before
it (moving it aside, never deleting it). Whether to resume is decided in resume.py.

A checkpoint is a directory `WORKDIR/checkpoints/<step>/`, written atomically by Orbax (into a
temporary directory renamed on commit), with two items: `state`, the whole TrainState pytree, and
`meta`, JSON (the loop's position record, the input description and the config: train.py). After
Orbax commits it, process 0 adds `ohc_digest.json` (size and SHA-256 of every file), so that a
truncated or corrupted checkpoint is recognised before it is read.
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


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def _digest(step_dir: str) -> dict:
  files = sorted(os.path.relpath(os.path.join(root, name), step_dir)
                 for root, _, names in os.walk(step_dir) for name in names)
  return {rel: [os.path.getsize(os.path.join(step_dir, rel)), _sha256(os.path.join(step_dir, rel))]
          for rel in files if not rel.startswith(DIGEST)}


def write_digest(step_dir: str) -> None:
  digest, tmp = _digest(step_dir), os.path.join(step_dir, DIGEST + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(digest, f)
  os.replace(tmp, os.path.join(step_dir, DIGEST))


def verify_digest(step_dir: str) -> Optional[str]:
  """None if the checkpoint matches its digest (or has none yet); else what is wrong."""
  try:
    with open(os.path.join(step_dir, DIGEST)) as f:
      expected = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return f'{DIGEST} unreadable'
  for rel, (size, sha) in sorted(expected.items()):
    full = os.path.join(step_dir, rel)
    if not os.path.exists(full):
      return f'{rel} missing'
    if os.path.getsize(full) != size:
      return f'{rel} truncated or changed ({os.path.getsize(full)} bytes, expected {size})'
    if _sha256(full) != sha:
      return f'{rel} corrupted (checksum mismatch)'
  return None


@dataclasses.dataclass
class Restored:
  state: Any
  meta: dict
  step: int


class Checkpointer:
  """Keeps the last `keep` checkpoints. Every process calls save and restore (Orbax coordinates
  multi-process saves); process 0 (`lead`) writes the digests and moves unusable checkpoints."""

  def __init__(self, workdir: str, keep: int = 3, *, lead: bool = True, read_only: bool = False):
    import orbax.checkpoint as ocp
    self._ocp, self.workdir, self._lead, self._read_only = ocp, workdir, lead, read_only
    self.directory = os.path.abspath(checkpoint_dir(workdir))
    self._pending: Optional[int] = None  # The step saving in the background, without a digest.
    self._manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only))

  def save(self, state, meta: dict) -> None:
    """Saves the state at its step with its JSON meta, in the background (a step saved twice keeps
    the first)."""
    self.wait()
    step = int(state.step)
    if step not in self._manager.all_steps():
      ocp = self._ocp
      self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       meta=ocp.args.JsonSave(meta)))
      self._pending = step

  def poll(self, block: bool = False) -> None:
    """Writes the digest of the last save once Orbax has committed it (block: waits for that)."""
    if block:
      self._manager.wait_until_finished()
    if self._pending is not None and not self._manager.is_saving_in_progress():
      step_dir = os.path.join(self.directory, str(self._pending))
      if self._lead and os.path.isdir(step_dir):
        write_digest(step_dir)
      self._pending = None

  def wait(self) -> None:
    self.poll(block=True)

  def close(self) -> None:
    self.wait()
    self._manager.close()

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def read_meta(self, step: int) -> Optional[dict]:
    """The JSON item of a checkpoint alone, or None if it does not read."""
    try:
      return self._manager.restore(
          step, args=self._ocp.args.Composite(meta=self._ocp.args.JsonRestore())).meta
    except Exception:  # pylint: disable=broad-except
      return None

  def restore(self, template, *, step: Optional[int] = None, quarantine: bool = False) -> Restored:
    """The latest usable checkpoint (or `step`), with the structure and shardings of `template`.
    An unusable one gives a warning and the one before it is tried; with `quarantine`, unusable
    checkpoints newer than the one restored are moved to WORKDIR/corrupt_checkpoints. Raises
    CheckpointError if none is usable."""
    self.wait()
    steps = sorted(self._manager.all_steps(), reverse=True)
    if step is not None and step not in steps:
      raise CheckpointError(f'no checkpoint of step {step} in {self.directory}: there are '
                            f'{", ".join(map(str, sorted(steps))) or "none"}')
    if not steps:
      raise CheckpointError(f'no checkpoint in {self.directory}: train a model there first '
                            f'(python -m ohc_jax.main --workdir={self.workdir})')
    failures = []
    for s in [step] if step is not None else steps:
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

  def _restore_step(self, step: int, template):
    problem = verify_digest(os.path.join(self.directory, str(step)))
    if problem:
      raise ValueError(problem)
    import jax
    ocp = self._ocp
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      state = restored.state
    except ValueError as e:
      if 'tree structures do not match' not in str(e):
        raise
      restored, state = self._restore_by_fields(step, template)
    if not isinstance(restored.meta, dict) or 'epoch' not in restored.meta:
      raise ValueError('meta item unreadable')
    if int(state.step) != step:
      raise ValueError(f'holds step {int(state.step)}, not {step}')
    return state, restored.meta

  def _restore_by_fields(self, step: int, template):
    """A checkpoint written by a version of the code whose TrainState had other fields: restores
    the fields both have; fields the checkpoint lacks keep the template's (initial) values."""
    import jax
    from etils import epath
    ocp = self._ocp
    saved = set(ocp.StandardCheckpointHandler().metadata(
        epath.Path(self.directory) / str(step) / 'state').keys())
    fields = [f.name for f in dataclasses.fields(template)]
    abstract = {f: jax.tree.map(ocp.utils.to_shape_dtype_struct, getattr(template, f))
                for f in fields if f in saved}
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract, strict=False), meta=ocp.args.JsonRestore()))
    missing, extra = sorted(set(fields) - saved), sorted(saved - set(fields))
    self._warn(f'the checkpoint of step {step} was written by another version of the state: '
               f'{", ".join(missing) or "no field"} initialised afresh'
               f'{"; " + ", ".join(extra) + " ignored" if extra else ""}')
    return restored, template.replace(**dict(restored.state))

  def _warn(self, message: str) -> None:
    if self._lead:
      print(f'warning: {message}', file=sys.stderr, flush=True)

  def _quarantine(self, steps) -> None:
    if self._lead:
      root = os.path.join(self.workdir, QUARANTINE_DIR)
      os.makedirs(root, exist_ok=True)
      for s in steps:
        target, n = os.path.join(root, str(s)), 1
        while os.path.exists(target):
          target, n = os.path.join(root, f'{s}.{n}'), n + 1
        os.replace(os.path.join(self.directory, str(s)), target)
        self._warn(f'moved the unusable checkpoint of step {s} to {target}')
    import jax
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices('ohc_jax_quarantine')
    self._manager.reload()
