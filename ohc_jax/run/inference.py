"""Loading a trained run for inference (predict, report): `load_trained` restores a workdir's
checkpoint as a `Trained` model, ready for point-wise inference on every device."""

import dataclasses
import os
from typing import Any, Optional

from ohc_jax.run.checkpoints import CheckpointError, Checkpointer, checkpoint_dir, committed_steps
from ohc_jax.errors import UsageError


@dataclasses.dataclass
class Trained:
  config: Any
  meta: dict
  state: Any
  step: int
  model: Any
  mesh: Any
  eval_step: Any


def load_trained(workdir: str, *, step: Optional[int] = None, num_devices: int = 0,
                 eval_batch_size: Optional[int] = None) -> Trained:
  """The model of a workdir's latest usable checkpoint (or `step`), ready for point-wise inference
  on every device, in batches of eval_batch_size (default the run's; rounded up to a multiple of
  the devices). Raises UsageError if the workdir or its checkpoints are missing."""
  if not os.path.isdir(workdir):
    raise UsageError(f'--workdir={workdir} does not exist: name the workdir of a training run')
  steps = committed_steps(workdir)
  if not steps:
    raise CheckpointError(f'{workdir} holds no checkpoint ({checkpoint_dir(workdir)} is missing '
                          f'or empty): train there first, python -m ohc_jax.main --workdir={workdir}')
  if step is not None and step not in steps:
    raise CheckpointError(f'{workdir} has no checkpoint of step {step}: it has steps '
                          f'{_listed(steps)}; pass one of them to --step, or leave --step out for '
                          f'the latest')
  import jax
  import ml_collections

  from ohc_jax import configuration, sharding
  from ohc_jax.run import experiment

  ckpt = Checkpointer(workdir, read_only=True, lead=jax.process_index() == 0)
  # The config and input description are in every checkpoint's meta; read the latest usable's.
  meta = _read_meta_json(ckpt, step)
  config = ml_collections.ConfigDict({**configuration.base_config().to_dict(), **meta['config']})
  mesh = sharding.device_mesh(num_devices)
  config.eval_batch_size = -(-(eval_batch_size or config.eval_batch_size) // mesh.size) * mesh.size
  spec = experiment.InputSpec(tuple(meta['input_shape']), meta.get('input_dtype', 'float32'),
                              meta['scale'], meta['offset'])
  exp = experiment.build(config, spec, mesh, train=False)
  try:
    restored = ckpt.restore(exp.init_state(seed=0), step=step)
  except CheckpointError:  # Its advice is training's (--overwrite), which would wipe this run.
    raise CheckpointError(_unusable(workdir, steps, step, 'the warnings above say why')) from None
  finally:
    ckpt.close()
  return Trained(config, restored.meta, restored.state, restored.step, exp.model, mesh,
                 exp.eval_step)


def _read_meta_json(ckpt: Checkpointer, step: Optional[int]) -> dict:
  """The meta item of the newest checkpoint whose meta reads (without restoring any array)."""
  candidates = [step] if step is not None else sorted(ckpt.steps(), reverse=True)
  for s in candidates:
    meta = ckpt.read_meta(s)
    if isinstance(meta, dict) and 'config' in meta and 'input_shape' in meta:
      return meta
  raise CheckpointError(_unusable(ckpt.workdir, committed_steps(ckpt.workdir), step,
                                  'no readable meta item'))


def _listed(steps) -> str:
  return ', '.join(map(str, steps))


def _unusable(workdir: str, steps: list, step: Optional[int], why: str) -> str:
  """The error when the checkpoints asked for are unusable (`why`), with advice that changes
  nothing in workdir: never --overwrite, which would wipe a finished run's results."""
  others = [s for s in steps if s != step]
  if step is not None and others:
    return (f'the checkpoint of step {step} in {checkpoint_dir(workdir)} is unusable ({why}): pass '
            f'another of its steps ({_listed(others)}) to --step, or leave --step out')
  return (f'no checkpoint in {checkpoint_dir(workdir)} is usable (steps {_listed(steps)}: {why}); '
          f'nothing was changed: copy back an intact {checkpoint_dir(workdir)}, or train a new '
          f'run in another --workdir')
