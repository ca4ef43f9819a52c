"""Resuming, the one owner of it: what to do with a workdir (start afresh, resume, refuse,
overwrite: `decide`, read before JAX starts), preparing it, and restoring a run's checkpoint with
the config checked against the saved one (`restore`)."""

import json
import os
import shutil
import tempfile

from ohc_jax.run.checkpoints import CHECKPOINT_DIR, QUARANTINE_DIR, committed_steps
from ohc_jax.errors import UsageError

# What a training run writes into its workdir; --overwrite removes these and nothing else.
OUTPUTS = ('config.json', 'metrics.jsonl', 'steps.jsonl', 'results.json', 'cluster_map.json',
           'timing.json', CHECKPOINT_DIR, QUARANTINE_DIR, 'plots', 'tensorboard', 'profile')

# Config fields that may change when a run is resumed: they change how the run is operated, logged
# or evaluated, not what it trains. (num_epochs: a run can be extended.) Every other field must be
# equal, or the run is refused.
RESUMABLE_FIELDS = frozenset({
    'num_epochs', 'data_dir', 'download', 'eval_batch_size', 'assign_impl', 'num_devices',
    'distributed', 'coordinator_address', 'num_processes', 'process_id', 'log_every_steps',
    'progress_bar', 'checkpoint_every_steps', 'keep_checkpoints', 'plots_every_epochs',
    'profile_steps', 'input_mode', 'max_host_memory_gb', 'eval_every_steps', 'skip_bad_records',
    'input_threads',
})


def jsonable_config(config) -> dict:
  return json.loads(config.to_json_best_effort())


def differing_fields(saved: dict, config) -> list[str]:
  """'field (saved -> new)' for every field, other than RESUMABLE_FIELDS, whose value differs.

  A field the saved run does not know about (added to the code since) differs only if it is not at
  its default value.
  """
  from ohc_jax.configuration import base_config
  new = jsonable_config(config)
  defaults = jsonable_config(base_config())
  out = []
  for field in sorted(set(saved) | set(new)):
    if field in RESUMABLE_FIELDS or field not in new:
      continue
    if field not in saved:
      if field in defaults and new[field] == defaults[field]:
        continue
      out.append(f'{field} (absent -> {new[field]!r})')
    elif saved[field] != new[field]:
      out.append(f'{field} ({saved[field]!r} -> {new[field]!r})')
  return out


def refuse_if_config_differs(saved: dict, config, workdir: str) -> None:
  differ = differing_fields(saved, config)
  if differ:
    raise UsageError(f'cannot resume the run in {workdir}: the config differs in '
                     f'{", ".join(differ)}; use the run\'s values to resume it, choose another '
                     f'--workdir, or pass --overwrite to start afresh')


def check_writable(workdir: str) -> None:
  """Raises UsageError unless workdir is named and is, or can be made, a directory this process
  can write in, with its output folders (checked before the workdir is locked, and by decide).

  Tries it, by making a temporary directory in workdir or its nearest existing ancestor, and
  removes it: nothing is left behind.
  """
  if not workdir:
    raise UsageError('--workdir is empty: name a directory for the run')
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise UsageError(f'--workdir={workdir}: {existing} is a file, not a directory: choose another '
                     f'--workdir')
  # The output folders a previous run left may be read-only on their own (a mount): each is tried.
  for directory in [existing] + [os.path.join(workdir, name) for name in OUTPUTS
                                 if os.path.isdir(os.path.join(workdir, name))]:
    try:
      tempfile.TemporaryDirectory(dir=directory).cleanup()
    except OSError as e:
      raise UsageError(f'--workdir={workdir}: cannot write in {directory} ({e.strerror or e}): '
                       f'make it writable or choose another --workdir') from None


def decide(config, workdir: str, overwrite: bool) -> bool:
  """Decides what to do with the workdir, reading files only (safe before JAX starts).

  Returns True to resume (an unfinished run with checkpoints, same config but RESUMABLE_FIELDS),
  False to start afresh (no run there, a run without checkpoints, or overwrite). Raises UsageError
  for a finished run (results.json) without overwrite, or a config that differs.
  """
  check_writable(workdir)
  if overwrite:
    return False
  if os.path.exists(os.path.join(workdir, 'results.json')):
    raise UsageError(f'{workdir} already holds a finished run (results.json): choose another '
                     f'--workdir, or pass --overwrite to replace it')
  if not committed_steps(workdir):
    return False
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    saved = None  # Compared after restoring, with the config saved in the checkpoint.
  if saved is not None:
    refuse_if_config_differs(saved, config, workdir)
  return True


def prepare(config, workdir: str, overwrite: bool) -> None:
  """Process 0 makes the workdir (emptied of a previous run's OUTPUTS with overwrite, nothing
  else) and writes config.json; then every process may write in it."""
  import jax
  if jax.process_index() == 0:
    for name in OUTPUTS if overwrite else ():
      path = os.path.join(workdir, name)
      if os.path.isdir(path):
        shutil.rmtree(path)
      elif os.path.exists(path):
        os.remove(path)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('ohc_jax_workdir_ready')


def restore(ckpt, template, config, workdir: str):
  """The latest usable checkpoint (unusable newer ones moved aside), refused if its config differs
  from `config` beyond RESUMABLE_FIELDS."""
  restored = ckpt.restore(template, quarantine=True)
  refuse_if_config_differs(restored.meta['config'], config, workdir)
  return restored
