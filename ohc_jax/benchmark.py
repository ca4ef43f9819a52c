r"""Benchmarks that print and save (JSON) their figures.

  python -m ohc_jax.benchmark                  # --suite=train: simp encoder, CIFAR-10-shaped batches
  python -m ohc_jax.benchmark --suite=assign   # sequential vs parallel combination assignment
  python -m ohc_jax.benchmark --suite=scaling  # train-step images/s on 1, 2, 4, 8 devices
"""

import json
import os
import platform
import statistics
import sys
import time

from absl import app, flags

_SUITE = flags.DEFINE_enum('suite', 'train', ['train', 'assign', 'scaling'], 'What to measure.')
_OUT = flags.DEFINE_string('out', None, 'JSON file for the figures (default: '
                           'benchmarks/<suite>-<platform>.json).')
_BATCH = flags.DEFINE_integer('batch_size', 256, 'Global batch for the train and scaling suites.')
_STEPS = flags.DEFINE_integer('steps', 30, 'Timed steps per measurement.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Measurements per figure; the median is reported.')
_DEVICES = flags.DEFINE_list('devices', ['1', '2', '4', '8'], 'Device counts for --suite=scaling '
                             '(simulated on the CPU).')


def _timed_steps(step, state, batches, steps, repeats):
  """Median seconds per step over `repeats` runs of `steps` steps, after a warm-up step."""
  import jax
  state, m = step(state, batches[0])
  jax.block_until_ready(m)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for i in range(steps):
      state, m = step(state, batches[i % len(batches)])
    jax.block_until_ready((state, m))
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times), state


def train_throughput(method: str, batch_size: int, steps: int, repeats: int,
                     num_devices: int = 1, assign_impl: str = 'parallel') -> float:
  """Images/s of the reference's CIFAR-10 setup (simp encoder, K=10) with the given method."""
  import jax
  import numpy as np
  from ohc_jax import configuration, models, parallel
  from ohc_jax import steps as steps_lib
  from ohc_jax.methods import make_method
  from ohc_jax.train_state import create_train_state, make_optimizer
  config = configuration.from_file(os.path.join(configuration.CONFIG_DIR, 'cifar10.py'))
  config.update(method=method, batch_size=batch_size, num_devices=num_devices,
                assign_impl=assign_impl)
  mesh = parallel.make_mesh(config)
  model, tx = models.make_encoder(config), make_optimizer(config)
  state = jax.device_put(create_train_state(config, model, tx, (32, 32, 3), jax.random.key(0)),
                         parallel.replicated(mesh))
  step = steps_lib.make_train_step(config, model, tx, make_method(config), mesh, 1 / 127.5, -1.0)
  rng = np.random.default_rng(0)
  batches = [parallel.to_global({'image': rng.integers(0, 256, (batch_size, 32, 32, 3), np.uint8),
                                 'label': np.zeros(batch_size, np.int64)}, mesh)
             for _ in range(4)]
  seconds, _ = _timed_steps(step, state, batches, steps, repeats)
  return batch_size / seconds


def assignment_ms(batch_size: int, num_clusters: int, repeats: int, impl='parallel') -> float:
  """Milliseconds per jitted combination assignment of a realistic (B, K) cost table."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from ohc_jax import assign
  rng = np.random.default_rng(0)
  z = rng.normal(size=(batch_size, 16)) + rng.normal(size=(num_clusters, 16))[
      rng.integers(0, num_clusters, batch_size)]
  costs = jnp.asarray(((z[:, None] - rng.normal(size=(num_clusters, 16))[None]) ** 2).sum(-1) / 10,
                      jnp.float32)
  fn = jax.jit(lambda c: assign.combination_assign(c, impl=impl))
  jax.block_until_ready(fn(costs))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(20):
      out = fn(costs)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / 20)
  return 1e3 * statistics.median(times)


def suite_train() -> dict:
  batch, steps, repeats = _BATCH.value, _STEPS.value, _REPEATS.value
  result = {
      'batch_size': batch,
      'combination_images_per_s': train_throughput('combination', batch, steps, repeats),
      'argmin_images_per_s': train_throughput('none', batch, steps, repeats),
      'assignment_ms_per_batch': assignment_ms(batch, 10, repeats),
  }
  print(f'simp encoder, CIFAR-10-shaped batches of {batch}, K=10:')
  print(f'  train, combination assignment: {result["combination_images_per_s"]:8.0f} images/s')
  print(f'  train, plain argmin:           {result["argmin_images_per_s"]:8.0f} images/s')
  print(f'  combination assignment alone:  {result["assignment_ms_per_batch"]:8.3f} ms/batch')
  return result


def suite_assign() -> dict:
  from ohc_jax import bench_assign
  rows = bench_assign.run()
  print(bench_assign.format_table(rows))
  return {'rows': rows}


def suite_scaling() -> dict:
  rows = []
  for n in map(int, _DEVICES.value):
    ips = train_throughput('combination', _BATCH.value, _STEPS.value, _REPEATS.value, n)
    rows.append({'devices': n, 'images_per_s': ips})
    print(f'{n} devices: {ips:8.0f} images/s (global batch {_BATCH.value})', flush=True)
  return {'batch_size': _BATCH.value, 'rows': rows}


def main(argv):
  del argv
  import jax
  if _SUITE.value == 'scaling':
    jax.config.update('jax_num_cpu_devices', max(map(int, _DEVICES.value)))
  suites = {'train': suite_train, 'assign': suite_assign, 'scaling': suite_scaling}
  backend = jax.default_backend()
  result = suites[_SUITE.value]()
  result.update(suite=_SUITE.value, backend=backend, device=str(jax.devices()[0].device_kind),
                device_count=jax.device_count(), cpu=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), jax_version=jax.__version__,
                time=time.strftime('%Y-%m-%d %H:%M:%S'))
  out = _OUT.value or os.path.join('benchmarks', f'{_SUITE.value}-{backend}.json')
  os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
  with open(out, 'w') as f:
    json.dump(result, f, indent=2)
  print(f'saved {out}', file=sys.stderr)


if __name__ == '__main__':
  app.run(main)
