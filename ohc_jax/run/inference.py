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
  if not committed_steps(workdir):
    raise CheckpointError(f'{workdir} holds no checkpoint ({checkpoint_dir(workdir)} is missing '
                          f'or empty): train there first, python -m ohc_jax.main --workdir={workdir}')
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
  restored = ckpt.restore(exp.init_state(seed=0), step=step)
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
  raise CheckpointError(f'no usable checkpoint in {ckpt.directory} (no readable meta item); '
                        f'train there again with --overwrite')
