"""Devices and processes: the ('data',) mesh, global batches, multi-process start-up."""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ohc_jax.errors import UsageError


def maybe_initialize_distributed(config) -> None:
  """jax.distributed.initialize() when asked for, or when a cluster launched several tasks."""
  launched = int(os.environ.get('SLURM_NTASKS', '1')) > 1
  if not (config.distributed or launched):
    return
  kwargs = {}
  if config.get('coordinator_address'):
    kwargs = dict(coordinator_address=config.coordinator_address,
                  num_processes=config.num_processes, process_id=config.process_id)
  jax.distributed.initialize(**kwargs)


def make_mesh(config) -> Mesh:
  """A 1-D ('data',) mesh over config.num_devices devices (0: all of them)."""
  devices = jax.devices()
  n = config.num_devices or len(devices)
  if n > len(devices):
    raise UsageError(f'num_devices={n} but only {len(devices)} devices are visible: lower '
                     f'--config.num_devices (0 uses all)')
  if jax.process_count() > 1 and n != len(devices):
    raise UsageError('multi-process runs use every device: set --config.num_devices=0')
  if config.batch_size % n:
    raise UsageError(f'batch_size={config.batch_size} does not divide by {n} devices: set '
                     f'--config.batch_size to a multiple of {n}')
  if config.eval_batch_size % n:
    raise UsageError(f'eval_batch_size={config.eval_batch_size} does not divide by {n} devices: '
                     f'set --config.eval_batch_size to a multiple of {n}')
  return Mesh(np.array(devices[:n]), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def to_global(local_batch, mesh: Mesh):
  """This process's rows of a batch -> global arrays sharded over 'data'."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
