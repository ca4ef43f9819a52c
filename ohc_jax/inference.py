"""Loading a trained run for inference (predict, report): `load_trained` restores a workdir's
checkpoint as a `Trained` model, ready for point-wise inference on every device."""

import dataclasses
import os
from typing import Any, Optional

from ohc_jax.checkpoints import CheckpointError, Checkpointer, checkpoint_dir, committed_steps
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
  on every device. Raises UsageError if the workdir or its checkpoints are missing."""
  if not os.path.isdir(workdir):
    raise UsageError(f'--workdir={workdir} does not exist: name the workdir of a training run')
  if not committed_steps(workdir):
    raise CheckpointError(f'{workdir} holds no checkpoint ({checkpoint_dir(workdir)} is missing '
                          f'or empty): train there first, python -m ohc_jax.main --workdir={workdir}')
  import jax

  from ohc_jax import configuration, models, sharding, steps
  from ohc_jax.train_state import create_train_state, make_optimizer

  ckpt = Checkpointer(workdir, read_only=True, lead=jax.process_index() == 0)
  # The config and input description are in every checkpoint's meta; read the latest usable's.
  meta = _read_meta_json(ckpt, step)
  import ml_collections
  config = ml_collections.ConfigDict({**configuration.base_config().to_dict(), **meta['config']})
  config.num_devices = num_devices
  n = num_devices or len(jax.devices())
  batch = eval_batch_size or config.eval_batch_size
  config.eval_batch_size = -(-batch // n) * n
  config.batch_size = n  # Not used for inference; any multiple of n passes make_mesh.
  mesh = sharding.make_mesh(config)
  model = models.make_encoder(config)
  tx = make_optimizer(config)
  template = jax.device_put(
      create_train_state(config, model, tx, tuple(meta['input_shape']), jax.random.key(0)),
      sharding.replicated(mesh))
  restored = ckpt.restore(template, step=step)
  ckpt.close()
  eval_step = steps.make_eval_step(config, model, mesh, restored.meta['scale'],
                                   restored.meta['offset'])
  return Trained(config, restored.meta, restored.state, restored.step, model, mesh, eval_step)


def _read_meta_json(ckpt: Checkpointer, step: Optional[int]) -> dict:
  """The meta item of the newest checkpoint whose meta reads (without restoring any array)."""
  candidates = [step] if step is not None else sorted(ckpt.steps(), reverse=True)
  for s in candidates:
    meta = ckpt.read_meta(s)
    if isinstance(meta, dict) and 'config' in meta and 'input_shape' in meta:
      return meta
  raise CheckpointError(f'no usable checkpoint in {ckpt.directory} (no readable meta item); '
                        f'train there again with --overwrite')
