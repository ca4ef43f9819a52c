"""A thin wrapper of Orbax's CheckpointManager over WORKDIR/checkpoints, adding what Orbax lacks:
an integrity digest per checkpoint, and falling back from an unusable checkpoint to the one before
it (moving it aside, never deleting it). Whether to resume is decided in resume.py.

A checkpoint is a directory `WORKDIR/checkpoints/<step>/`, written atomically by Orbax (into a
temporary directory renamed on commit), with two items: `state`, the whole TrainState pytree, and
`meta`, JSON (the loop's position record, the input description and the config: train.py). After
Orbax commits it, process 0 adds `ohc_digest.json` (size and SHA-256 of every file), so that a
truncated or corrupted checkpoint is recognised before it is read. A kill between the commit and
the digest leaves a checkpoint without one: `meta` also holds `state_checksum`, a checksum of the
state's arrays written in the same atomic save, checked after every restore, so that such a
checkpoint is verified too (and one that fails is moved aside like any other).

A save that fails in Orbax's background threads (disk full, I/O error, read-only) is raised on the
main thread as errors.WriteFailed at the next poll, save or close; Orbax's own error logs of it are
silenced (the loop reports it in one line) and its threads are shut down.
"""

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import sys
import warnings
from typing import Any, Optional

from ohc_jax.errors import UsageError, WriteFailed, writing

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


def state_checksum(state) -> int:
  """A 32-bit position-weighted sum of the bits of every array of the state (computed where the
  arrays live, sharded or not): any changed or swapped value changes it."""
  import jax
  leaves = [jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
            for x in jax.tree.leaves(state)]
  return int(_jitted_checksum()(leaves))


@functools.cache
def _jitted_checksum():
  import jax
  import jax.numpy as jnp

  def checksum(leaves):
    total = jnp.uint32(0)
    for x in leaves:
      x = jnp.ravel(x)
      if x.dtype == jnp.bool_ or x.dtype.itemsize == 1:
        bits = x.astype(jnp.uint8).astype(jnp.uint32)
      else:
        bits = jax.lax.bitcast_convert_type(
            x, jnp.uint16 if x.dtype.itemsize == 2 else jnp.uint32).astype(jnp.uint32)
      weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) | jnp.uint32(1)
      total = total + jnp.sum(bits * weights, dtype=jnp.uint32)
    return total
  return jax.jit(checksum)


def _from_orbax(record) -> bool:
  """Whether a log record is Orbax's, or carries an exception raised in Orbax's code."""
  if '/orbax/' in record.pathname.replace(os.sep, '/'):
    return True
  tb = record.exc_info[2] if record.exc_info else None
  while tb is not None:
    if '/orbax/' in tb.tb_frame.f_code.co_filename.replace(os.sep, '/'):
      return True
    tb = tb.tb_next
  return False


@functools.cache
def _quiet_failed_saves() -> None:
  """A save that fails (disk full, I/O error) is reported once, by the loop, as WriteFailed; this
  silences what Orbax's threads print about it meanwhile: its error logs, asyncio's 'exception was
  never retrieved' for its gathered writes, and the 'Event loop is closed' RuntimeErrors of
  tensorstore writes that complete (into the abandoned temporary directory) after Orbax closed its
  event loop, printed as unraisable exceptions. Other errors and logs pass."""
  logging.getLogger('absl').addFilter(
      lambda r: not (r.levelno >= logging.ERROR and _from_orbax(r)))
  logging.getLogger('asyncio').addFilter(
      lambda r: not ('exception was never retrieved' in r.getMessage() and _from_orbax(r)))
  previous = sys.unraisablehook

  def hook(unraisable):
    if not (unraisable.exc_type is RuntimeError and
            str(unraisable.exc_value) == 'Event loop is closed'):
      previous(unraisable)
  sys.unraisablehook = hook


def _save_failure(error: Exception, step_dir: str) -> WriteFailed:
  """Orbax's exception of a failed background save as WriteFailed, with its OS error code."""
  text = str(error).splitlines()[0] if str(error) else type(error).__name__
  found = re.search(r"os_error_code='(\d+)'|\[Errno (\d+)\]", text)
  code = getattr(error, 'errno', None) or (int(found.group(1) or found.group(2)) if found else 0)
  return WriteFailed(step_dir, 'a checkpoint', os.strerror(code) if code else text[:200], code)


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


def _warn(lead: bool, message: str) -> None:
  if lead:
    print(f'warning: {message}', file=sys.stderr, flush=True)


def _first_line(e: Exception) -> str:
  return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


class Checkpointer:
  """Keeps the last `keep` checkpoints. Every process calls save and restore (Orbax coordinates
  multi-process saves); process 0 (`lead`) writes the digests and moves unusable checkpoints."""

  def __init__(self, workdir: str, keep: int = 3, *, lead: bool = True, read_only: bool = False):
    import orbax.checkpoint as ocp
    self._ocp, self.workdir, self._lead, self._read_only = ocp, workdir, lead, read_only
    self.directory = os.path.abspath(checkpoint_dir(workdir))
    self._pending: Optional[int] = None  # The step saving in the background, without a digest.
    self._failed = False  # A save failed: close shuts Orbax down without waiting on it again.
    _quiet_failed_saves()
    self._manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only))

  def save(self, state, meta: dict) -> None:
    """Saves the state at its step with its JSON meta and the state's checksum, in the background
    (a step saved twice keeps the first)."""
    self.wait()
    step, ocp = int(state.step), self._ocp
    if step not in self._manager.all_steps():
      meta = {**meta, 'state_checksum': state_checksum(state)}
      self._pending = step
      with self._failing(step):
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)))

  def poll(self, block: bool = False) -> None:
    """Writes the digest of the last save once Orbax has committed it (block: waits for that).
    Raises WriteFailed if the save failed."""
    if self._pending is None or not (block or not self._manager.is_saving_in_progress()):
      return
    step, step_dir = self._pending, os.path.join(self.directory, str(self._pending))
    with self._failing(step):
      self._manager.wait_until_finished()
    if self._lead and os.path.isdir(step_dir):
      with writing(os.path.join(step_dir, DIGEST), "a checkpoint's digest"):
        write_digest(step_dir)
    self._pending = None

  @contextlib.contextmanager
  def _failing(self, step: int):
    """Within the block, an exception of Orbax's save becomes WriteFailed and marks the failure."""
    try:
      yield
    except WriteFailed:
      raise
    except Exception as e:  # pylint: disable=broad-except  (Orbax raises what its threads raised)
      self._failed, self._pending = True, None
      # Orbax's coroutines left unawaited by the failure would each warn at exit.
      warnings.filterwarnings('ignore', 'coroutine .* was never awaited', RuntimeWarning)
      raise _save_failure(e, os.path.join(self.directory, str(step))) from None

  def wait(self) -> None:
    self.poll(block=True)

  def close(self) -> None:
    """Waits for the last save and shuts Orbax's threads down; after a failed save, without
    raising it again."""
    try:
      if not self._failed:
        self.wait()
    finally:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        if not self._failed:
          raise

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
        state, meta = _restore_step(self._manager, self.directory, s, template, self._lead)
      except Exception as e:  # pylint: disable=broad-except
        failures.append((s, _first_line(e)))
        _warn(self._lead, f'checkpoint {os.path.join(self.directory, str(s))} is unusable '
                          f'({_first_line(e)}); trying the one before it')
        continue
      if failures and quarantine and not self._read_only:
        _quarantine(self.workdir, [f for f, _ in failures], self._lead)
        self._manager.reload()
      return Restored(state, meta, s)
    listed = '; '.join(f'step {s}: {r}' for s, r in failures)
    raise CheckpointError(f'no usable checkpoint in {self.directory} ({listed}); nothing was '
                          f'deleted: pass --overwrite to start afresh')


def _restore_step(manager, directory: str, step: int, template, lead: bool):
  """(state, meta) of one checkpoint, verified by its digest (if written) and its state checksum;
  raises if it is unusable."""
  problem = verify_digest(os.path.join(directory, str(step)))
  if problem:
    raise ValueError(problem)
  import jax
  import orbax.checkpoint as ocp
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    state, by_fields = restored.state, False
  except ValueError as e:
    if 'tree structures do not match' not in str(e):
      raise
    restored, state = _restore_by_fields(manager, directory, step, template, lead)
    by_fields = True
  if not isinstance(restored.meta, dict) or 'epoch' not in restored.meta:
    raise ValueError('meta item unreadable')
  if int(state.step) != step:
    raise ValueError(f'holds step {int(state.step)}, not {step}')
  expected = restored.meta.get('state_checksum')
  if expected is not None and not by_fields and state_checksum(state) != expected:
    raise ValueError('its arrays do not match the checksum saved with them (corrupted)')
  return state, restored.meta


def _restore_by_fields(manager, directory: str, step: int, template, lead: bool):
  """A checkpoint written by a version of the code whose TrainState had other fields: restores
  the fields both have; fields the checkpoint lacks keep the template's (initial) values."""
  import jax
  import orbax.checkpoint as ocp
  from etils import epath
  saved = set(ocp.StandardCheckpointHandler().metadata(
      epath.Path(directory) / str(step) / 'state').keys())
  fields = [f.name for f in dataclasses.fields(template)]
  abstract = {f: jax.tree.map(ocp.utils.to_shape_dtype_struct, getattr(template, f))
              for f in fields if f in saved}
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract, strict=False), meta=ocp.args.JsonRestore()))
  missing, extra = sorted(set(fields) - saved), sorted(saved - set(fields))
  _warn(lead, f'the checkpoint of step {step} was written by another version of the state: '
              f'{", ".join(missing) or "no field"} initialised afresh'
              f'{"; " + ", ".join(extra) + " ignored" if extra else ""}')
  return restored, template.replace(**dict(restored.state))


def _quarantine(workdir: str, steps, lead: bool) -> None:
  """Moves unusable checkpoints to WORKDIR/corrupt_checkpoints (process 0; all processes wait)."""
  if lead:
    root = os.path.join(workdir, QUARANTINE_DIR)
    os.makedirs(root, exist_ok=True)
    for s in steps:
      target, n = os.path.join(root, str(s)), 1
      while os.path.exists(target):
        target, n = os.path.join(root, f'{s}.{n}'), n + 1
      os.replace(os.path.join(checkpoint_dir(workdir), str(s)), target)
      _warn(lead, f'moved the unusable checkpoint of step {s} to {target}')
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('ohc_jax_quarantine')
