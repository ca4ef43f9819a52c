"""Devices and processes: the ('data',) mesh, global batches, multi-process start-up."""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ohc_jax import memory
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
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError as e:  # What neither the config nor a cluster's environment said.
    raise UsageError(f'distributed=True needs the coordinator\'s address, the number of processes '
                     f'and each process\'s id, which neither the config nor a cluster environment '
                     f'(SLURM, a TPU pod) gave (jax: {str(e).rstrip(".")}): start every process '
                     f'with --config.coordinator_address=HOST:PORT (process 0\'s) '
                     f'--config.num_processes=N --config.process_id=I, or launch them under '
                     f'SLURM (launch/slurm.sh)') from None


def device_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D ('data',) mesh over num_devices devices (0: all of them)."""
  devices = jax.devices()
  n = num_devices or len(devices)
  if n > len(devices):
    raise UsageError(f'num_devices={n} but only {len(devices)} devices are visible: lower '
                     f'--config.num_devices (0 uses all)')
  if jax.process_count() > 1 and n != len(devices):
    raise UsageError('multi-process runs use every device: set --config.num_devices=0')
  return Mesh(np.array(devices[:n]), ('data',))


def make_mesh(config) -> Mesh:
  """The training mesh: config.num_devices devices, which must divide both batch sizes and hold
  what memory.needs counts of the config (the state and their shares of the batches)."""
  mesh = device_mesh(config.num_devices)
  n = mesh.size
  for field in ('batch_size', 'eval_batch_size'):
    if config[field] % n:
      raise UsageError(f'{field}={config[field]} does not divide by {n} devices: set '
                       f'--config.{field} to a multiple of {n}')
  device = mesh.devices.flat[0]
  available = device_memory(device)
  if available:
    memory.refuse_if_too_big(config, available, f'each {device.platform.upper()} device',
                             devices=n)
  return mesh


def device_memory(device) -> int | None:
  """Bytes of memory a device offers JAX; None for the CPU, whose memory is the host's."""
  stats = device.memory_stats() if device.platform != 'cpu' else None
  return (stats or {}).get('bytes_limit')


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def to_global(local_batch, mesh: Mesh):
  """This process's rows of a batch -> global arrays sharded over 'data'."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
