r"""Benchmarks that print and save (JSON) their figures.

  python -m ohc_jax.benchmark                  # --suite=train: simp encoder, CIFAR-10-shaped batches
      [--train_cases=simp:32:256,resnet18:64:256 --compute_dtypes=float32,bfloat16]
  python -m ohc_jax.benchmark --suite=assign   # sequential vs parallel combination assignment
      [--assign_batch_sizes=256,1024,4096 --assign_num_clusters=10,100,1000]
      [--table_config=configs/cifar10.py --config_data_dir=../shared/data/tfds --table_epochs=3]
  python -m ohc_jax.benchmark --suite=scaling  # train-step images/s on 1, 2, 4, 8 devices
  python -m ohc_jax.benchmark --suite=input    # the train step fed from memory vs streamed
      [--data_dir=../shared/data/tfds --stream_dir=/tmp/tfds_ar/cifar10/3.0.2
       --stream_raw_dir=/tmp/tfds_ar/cifar10_raw/3.0.2
       --synthetic_dir=/tmp/tfds_ar/synthetic_raw/1.0.0]  (launch/to_array_record.py [--encoding=
       raw] and launch/make_synthetic_images.py --encoding=raw write the last three)
"""

import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from ohc_jax import cli  # pylint: disable=g-bad-import-order  (first: quiet TensorFlow and XLA)

from absl import flags

from ohc_jax.errors import UsageError

_SUITE = flags.DEFINE_enum('suite', 'train', ['train', 'assign', 'scaling', 'input'],
                           'What to measure.')
_OUT = flags.DEFINE_string('out', None, 'JSON file for the figures (default: '
                           'benchmarks/<suite>-<platform>.json).')
_BATCH = flags.DEFINE_integer('batch_size', 256, 'Global batch for the scaling and input suites.')
_TRAIN_CASES = flags.DEFINE_list('train_cases', ['simp:32:256'], '--suite=train: '
                                 'ENCODER:IMAGE_SIZE:GLOBAL_BATCH of each measurement, on '
                                 '3-channel images and K=10 (configs/cifar10.py otherwise).')
_DTYPES = flags.DEFINE_list('compute_dtypes', ['float32'], '--suite=train: config.compute_dtype '
                            'of each measurement (float32, bfloat16).')
_CONV_IMPL = flags.DEFINE_enum('conv_impl', 'auto', ['auto', 'space_to_depth', 'plain'],
                               '--suite=train: config.conv_impl.')
_STEPS = flags.DEFINE_integer('steps', 30, 'Timed steps per measurement.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Measurements per figure; the median is reported.')
_ASSIGN_B = flags.DEFINE_list('assign_batch_sizes', ['256', '1024', '4096'],
                              'Batch sizes B for --suite=assign.')
_ASSIGN_K = flags.DEFINE_list('assign_num_clusters', ['10', '100', '1000'],
                              'Cluster counts K for --suite=assign.')
_STAIRCASES = flags.DEFINE_list('staircase_sizes', ['256x10', '1024x100'],
                                'BxK of the staircase worst-case tables of --suite=assign.')
_TABLE_CONFIG = flags.DEFINE_string(
    'table_config', None, '--suite=assign also times the cost tables of a real training run of '
    'this config file (default: configs/default.py, the embedded digits).')
_TABLE_DATA_DIR = flags.DEFINE_string('config_data_dir', None, 'data_dir for --table_config.')
_TABLE_EPOCHS = flags.DEFINE_integer('table_epochs', 3, 'Epochs of that run; its tables are taken '
                                     'at initialisation, in epoch 1 and in the last epoch.')
_DATA_DIR = flags.DEFINE_string('data_dir', '../shared/data/tfds', '--suite=input: the tfds data '
                                'dir holding cifar10, loaded in memory and in stream mode as '
                                'training loads it.')
_STREAM_DIR = flags.DEFINE_string('stream_dir', '/tmp/tfds_ar/cifar10/3.0.2', '--suite=input: '
                                  'CIFAR-10 in ArrayRecord (launch/to_array_record.py).')
_STREAM_RAW_DIR = flags.DEFINE_string('stream_raw_dir', '/tmp/tfds_ar/cifar10_raw/3.0.2',
                                      '--suite=input: CIFAR-10 in ArrayRecord with raw images '
                                      '(launch/to_array_record.py --encoding=raw); empty: left out.')
_SYNTHETIC_DIR = flags.DEFINE_string('synthetic_dir', '/tmp/tfds_ar/synthetic_raw/1.0.0',
                                     '--suite=input: the synthetic 1.2M-image set in ArrayRecord, '
                                     'images raw as in the cache\'s copy of CIFAR-10, so the peaks '
                                     'compare one reading path (launch/make_synthetic_images.py '
                                     '--encoding=raw); empty: left out.')
_WARMUP = flags.DEFINE_integer('warmup', 10, '--suite=input: untimed steps before the timed ones.')
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


def _train_experiment(method: str, batch_size: int, num_devices: int = 1,
                      assign_impl: str = 'parallel', **overrides):
  """(experiment, four global batches) of the reference's default CIFAR-10 setup (simp encoder,
  K=10; docs/fidelity.md) with the given method, on images of overrides' image_size (32)."""
  import numpy as np
  from ohc_jax import configuration
  from ohc_jax.run import experiment
  size = overrides.pop('image_size', 32)
  config = configuration.from_file(os.path.join(configuration.CONFIG_DIR, 'cifar10.py'))
  config.update(method=method, batch_size=batch_size, num_devices=num_devices,
                assign_impl=assign_impl, **overrides)
  exp = experiment.build(config, experiment.InputSpec((size, size, 3), 'uint8', 1 / 127.5, -1.0,
                                                      num_train=60000))  # CIFAR-10's.
  rng = np.random.default_rng(0)
  batches = [exp.to_global({'image': rng.integers(0, 256, (batch_size, size, size, 3), np.uint8),
                            'label': np.zeros(batch_size, np.int64)}) for _ in range(4)]
  return exp, batches


def train_throughput(method: str, batch_size: int, steps: int, repeats: int,
                     num_devices: int = 1, assign_impl: str = 'parallel', **overrides) -> float:
  """Images/s of the train step of `_train_experiment`."""
  exp, batches = _train_experiment(method, batch_size, num_devices, assign_impl, **overrides)
  seconds, _ = _timed_steps(exp.train_step, exp.init_state(seed=0), batches, steps, repeats)
  return batch_size / seconds


def forward_ms(batch_size: int, steps: int, repeats: int, **overrides) -> float:
  """Milliseconds of the evaluation step (encoder forward, cost table, argmin) on a training batch:
  the forward part of a train step."""
  exp, batches = _train_experiment('none', batch_size, **overrides)
  state = exp.init_state(seed=0)
  step = lambda state, batch: (state, exp.eval_step(state, batch))
  seconds, _ = _timed_steps(step, state, batches, steps, repeats)
  return 1e3 * seconds


def peak_device_memory_mb():
  """The device's peak memory in use so far (MB), where the backend reports it (not XLA:CPU)."""
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  return stats['peak_bytes_in_use'] / 2**20 if 'peak_bytes_in_use' in stats else None


def _blob_costs(batch_size: int, num_clusters: int, seed: int = 0):
  """A realistic cost table: encodings around cluster centres, centroids elsewhere, sigma 10."""
  import numpy as np
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(batch_size, 16)) + rng.normal(size=(num_clusters, 16))[
      rng.integers(0, num_clusters, batch_size)]
  mu = rng.normal(size=(num_clusters, 16))
  sq = (z * z).sum(1)[:, None] - 2 * z @ mu.T + (mu * mu).sum(1)[None]
  return (sq / 10).astype(np.float32)


def _ms_per_call(fn, tables, repeats, calls):
  """Median over `repeats` of the mean milliseconds of fn over `calls` passes through `tables`."""
  import jax
  jax.block_until_ready(fn(tables[0]))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      out = [fn(t) for t in tables]
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / (calls * len(tables)))
  return 1e3 * statistics.median(times)


@functools.cache
def _assign_fn(impl, handover=True):
  """The jitted assignment, returning (labels, counts, loop iterations)."""
  import jax
  from ohc_jax.core import assign
  if handover:
    return jax.jit(lambda c: assign.combination_assign_with_rounds(c, impl=impl))
  return jax.jit(lambda c: assign._parallel(c, jax.numpy.zeros(c.shape[1], 'int32'),
                                            jax.default_backend() == 'cpu', handover_rate=0))


def assignment_ms(batch_size: int, num_clusters: int, repeats: int, impl='parallel',
                  calls: int = 20) -> tuple[float, int]:
  """(milliseconds per jitted combination assignment of a realistic table, rounds it took)."""
  import jax.numpy as jnp
  costs = jnp.asarray(_blob_costs(batch_size, num_clusters))
  fn = _assign_fn(impl)
  return _ms_per_call(fn, [costs], repeats, calls), int(fn(costs)[2])


def staircase(batch_size: int, num_clusters: int):
  """C[i, k] = i 1e-3 + k 1e-2: the rounds' worst case, one pair a round without the hand-over."""
  import numpy as np
  i, k = np.meshgrid(np.arange(batch_size), np.arange(num_clusters), indexing='ij')
  return (i * 1e-3 + k * 1e-2).astype(np.float32)


def training_tables(config, epochs: int) -> dict:
  """Cost tables of real training batches: {'init': (1, B, K), 'epoch 1': (S, B, K), 'epoch N':
  ...}, taken by the train step's own forward pass just before each step."""
  import jax
  import numpy as np
  from ohc_jax import models
  from ohc_jax.core import imbalance
  from ohc_jax import data as data_lib
  from ohc_jax.run import experiment
  from ohc_jax.core.costs import param_costs
  config.update(num_devices=1, num_epochs=epochs)
  data = data_lib.load(config)
  exp = experiment.build(config, experiment.InputSpec.of(data))
  state, model = exp.init_state(), exp.model

  @jax.jit
  def costs_of(state, images):
    z, _ = model.apply({'params': state.params['encoder'], 'batch_stats': state.batch_stats},
                       models.preprocess(images, data.scale, data.offset), train=True,
                       mutable=['batch_stats'])
    return param_costs(z, state.params, config.sigma,
                       imbalance.cost_log_prior(config, state.log_prior))  # As the step.

  feed = data_lib.train_feed(data.train, config.batch_size, config.seed)
  tables = {}
  for epoch in range(1, epochs + 1):
    taken = []
    for batch in feed.epoch(epoch):
      batch = exp.to_global(batch)
      if epoch in (1, epochs):
        taken.append(np.asarray(costs_of(state, batch['image'])))
      state, _ = exp.train_step(state, batch)
    if epoch == 1:
      tables['init'] = taken[:1]
    if taken:
      tables[f'epoch {epoch}'] = taken
  return {name: np.stack(t) for name, t in tables.items()}


def train_case(encoder: str, image_size: int, batch: int, compute_dtype: str) -> dict:
  """The train suite's figures of one case: images/s with combination assignment and with a plain
  argmin, the forward part, the assignment alone and its share of a step, peak device memory."""
  steps, repeats = _STEPS.value, _REPEATS.value
  case = dict(encoder=encoder, image_size=image_size, compute_dtype=compute_dtype,
              conv_impl=_CONV_IMPL.value)
  row = {'batch_size': batch, **case,
         'combination_images_per_s': train_throughput('combination', batch, steps, repeats,
                                                      **case),
         'argmin_images_per_s': train_throughput('none', batch, steps, repeats, **case),
         'forward_ms': forward_ms(batch, steps, repeats, **case),
         'assignment_ms_per_batch': assignment_ms(batch, 10, repeats)[0],
         'peak_device_memory_mb': peak_device_memory_mb()}
  step_ms = 1e3 * batch / row['combination_images_per_s']
  row['step_ms'] = step_ms
  row['assignment_share_of_step'] = row['assignment_ms_per_batch'] / step_ms
  print(f'{encoder} encoder, {compute_dtype}, {image_size}x{image_size}x3 batches of {batch}, '
        f'K=10:')
  print(f'  train, combination assignment: {row["combination_images_per_s"]:8.0f} images/s')
  print(f'  train, plain argmin:           {row["argmin_images_per_s"]:8.0f} images/s')
  print(f'  forward (evaluation step):     {row["forward_ms"]:8.3f} ms/batch')
  print(f'  combination assignment alone:  {row["assignment_ms_per_batch"]:8.3f} ms/batch '
        f'({100 * row["assignment_share_of_step"]:.1f}% of a {step_ms:.2f} ms step)')
  if row['peak_device_memory_mb'] is not None:
    print(f'  peak device memory so far:     {row["peak_device_memory_mb"]:8.0f} MB')
  return row


def suite_train() -> dict:
  cases = []
  for case in _TRAIN_CASES.value:
    parts = case.split(':')
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
      raise UsageError(f'--train_cases: {case!r} is not ENCODER:IMAGE_SIZE:BATCH, e.g. simp:32:256')
    cases.append((parts[0], int(parts[1]), int(parts[2])))
  from ohc_jax import models
  for encoder, _, _ in cases:
    if encoder not in ('simp', 'resnet18'):
      raise UsageError(f'--train_cases: encoder {encoder!r} does not take images: use simp or '
                       f'resnet18')
  for dtype in _DTYPES.value:
    if dtype not in models.COMPUTE_DTYPES:
      raise UsageError(f'--compute_dtypes: unknown {dtype!r}: use '
                       f'{", ".join(models.COMPUTE_DTYPES)}')
  rows = [train_case(encoder, size, batch, dtype) for encoder, size, batch in cases
          for dtype in _DTYPES.value]
  return {'rows': rows}


def suite_assign() -> dict:
  import jax.numpy as jnp
  import numpy as np
  from ohc_jax import configuration
  rows = []
  print(f'{"B":>5} {"K":>5} {"sequential ms":>14} {"parallel ms":>12} {"rounds":>7} {"speed-up":>9}')
  for batch in map(int, _ASSIGN_B.value):
    for num_clusters in map(int, _ASSIGN_K.value):
      big = batch * num_clusters >= 1_000_000
      seq, steps = assignment_ms(batch, num_clusters, 1 if big else _REPEATS.value, 'sequential',
                                 calls=1 if big else 10)
      par, rounds = assignment_ms(batch, num_clusters, _REPEATS.value, 'parallel',
                                  calls=2 if big else 10)
      rows.append({'batch_size': batch, 'num_clusters': num_clusters, 'sequential_ms': seq,
                   'sequential_steps': steps, 'parallel_ms': par, 'parallel_rounds': rounds,
                   'speedup': seq / par})
      print(f'{batch:5d} {num_clusters:5d} {seq:14.3f} {par:12.3f} {rounds:7d} {seq / par:8.1f}x',
            flush=True)
  print('worst case, a staircase table (one pair a round): ms per call')
  print(f'{"B":>5} {"K":>5} {"sequential":>11} {"parallel":>9} {"rounds":>7} {"no hand-over":>13} '
        f'{"rounds":>7}')
  worst = []
  for batch, num_clusters in (map(int, size.split('x')) for size in _STAIRCASES.value):
    costs = jnp.asarray(staircase(batch, num_clusters))
    seq = _ms_per_call(_assign_fn('sequential'), [costs], _REPEATS.value, 3)
    par = _ms_per_call(_assign_fn('parallel'), [costs], _REPEATS.value, 3)
    alone = _ms_per_call(_assign_fn('parallel', handover=False), [costs], _REPEATS.value, 3)
    rounds = int(_assign_fn('parallel')(costs)[2])
    alone_rounds = int(_assign_fn('parallel', handover=False)(costs)[2])
    worst.append({'batch_size': batch, 'num_clusters': num_clusters, 'sequential_ms': seq,
                  'parallel_ms': par, 'parallel_iterations': rounds,
                  'rounds_without_handover_ms': alone, 'rounds_without_handover': alone_rounds})
    print(f'{batch:5d} {num_clusters:5d} {seq:11.3f} {par:9.3f} {rounds:7d} {alone:13.3f} '
          f'{alone_rounds:7d}', flush=True)
  config = configuration.from_file(_TABLE_CONFIG.value or
                                   os.path.join(configuration.CONFIG_DIR, 'default.py'))
  if _TABLE_DATA_DIR.value:
    config.data_dir = _TABLE_DATA_DIR.value
  print(f'tables of a real training run ({config.dataset}, B={config.batch_size}, '
        f'K={config.num_clusters}, {_TABLE_EPOCHS.value} epochs): per table')
  print(f'{"stage":>10} {"tables":>7} {"rounds median":>14} {"max":>5} {"parallel ms":>12} '
        f'{"sequential ms":>14}')
  real = []
  for stage, tables in training_tables(config, _TABLE_EPOCHS.value).items():
    rounds = [int(_assign_fn('parallel')(t)[2]) for t in tables]
    timed = list(tables[:20])  # The sequential loop is slow: time at most 20 tables a stage.
    par = _ms_per_call(_assign_fn('parallel'), timed, _REPEATS.value, 1)
    seq = _ms_per_call(_assign_fn('sequential'), timed, _REPEATS.value, 1)
    real.append({'stage': stage, 'tables': len(tables), 'rounds_median': float(np.median(rounds)),
                 'rounds_max': max(rounds), 'parallel_ms': par, 'sequential_ms': seq})
    print(f'{stage:>10} {len(tables):7d} {np.median(rounds):14.1f} {max(rounds):5d} {par:12.3f} '
          f'{seq:14.3f}', flush=True)
  return {'rows': rows, 'worst_case': worst, 'training_tables': real,
          'training_config': config.to_dict()}


def suite_scaling() -> dict:
  rows = []
  for n in map(int, _DEVICES.value):
    ips = train_throughput('combination', _BATCH.value, _STEPS.value, _REPEATS.value, n)
    rows.append({'devices': n, 'images_per_s': ips})
    print(f'{n} devices: {ips:8.0f} images/s (global batch {_BATCH.value})', flush=True)
  return {'batch_size': _BATCH.value, 'rows': rows}


def _input_feed(mode: str, where: str, batch_size: int):
  """(feed, InputSpec) of an input: `where` a tfds data dir (its cifar10 loaded as training loads
  it: 'memory' decoded once into the cache, 'stream' from the set's ArrayRecord copy in the
  cache) or an ArrayRecord data set's NAME/VERSION folder (its 'train' split, streamed); fed by
  data.train_feed, as training feeds them. 'stream_normal': 'stream' with the reading threads at
  normal priority throughout (yield_cpu=False, as before 2026-12-05)."""
  from ohc_jax import configuration
  from ohc_jax import data as data_lib
  from ohc_jax.run import experiment
  if os.path.isfile(os.path.join(where, 'dataset_info.json')):
    source = data_lib.ImageSource(where, 'train')
    spec = experiment.InputSpec(source.image_shape, 'uint8', 1 / 127.5, -1.0, len(source))
  else:
    config = configuration.base_config()
    config.update(dataset='cifar10', data_dir=where, protocol='holdout',
                  input_mode='memory' if mode == 'memory' else 'stream')
    data = data_lib.load(config)
    source, spec = data.train, experiment.InputSpec.of(data)
  return (data_lib.train_feed(source, batch_size, seed=0, yield_cpu=mode != 'stream_normal'),
          spec)


def input_case(mode: str, where: str, batch_size: int, steps: int, warmup: int) -> dict:
  """Train images/s of the real train step (configs/cifar10.py: simp encoder, K=10) fed by a
  feed, over `steps` steps after `warmup`; in stream mode also the seconds to the first batch
  when resuming at 10% and at 90% of an epoch; and the process's peak RSS. Run it alone in a
  process (`_input_in_child`), so the peak is this feed's."""
  import jax
  from ohc_jax import configuration
  from ohc_jax.run import experiment
  feed, spec = _input_feed(mode, where, batch_size)
  if feed.steps_per_epoch < warmup + steps:
    raise UsageError(f'{where}: an epoch of {feed.steps_per_epoch} steps is shorter than '
                     f'--warmup + --steps = {warmup + steps}: lower them')
  config = configuration.from_file(os.path.join(configuration.CONFIG_DIR, 'cifar10.py'))
  config.update(batch_size=batch_size, num_devices=1)
  exp = experiment.build(config, spec)
  state = exp.init_state()
  batches = feed.epoch(1)
  for _ in range(warmup):  # Compiled, the feed's threads started and its queue full.
    state, m = exp.train_step(state, exp.to_global(next(batches)))
  jax.block_until_ready(m)
  start = time.perf_counter()
  for _ in range(steps):
    state, m = exp.train_step(state, exp.to_global(next(batches)))
  jax.block_until_ready((state, m))
  result = {'images_per_s': steps * batch_size / (time.perf_counter() - start),
            'steps_per_epoch': feed.steps_per_epoch}
  batches.close()
  if mode != 'memory':
    for fraction in (0.1, 0.9):
      start = time.perf_counter()
      resumed = feed.epoch(2, int(fraction * feed.steps_per_epoch))
      next(resumed)
      result[f'first_batch_at_{fraction:.0%}_s'] = time.perf_counter() - start
      resumed.close()
  result['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return result


def _input_in_child(mode: str, where: str) -> dict:
  """input_case in a process of its own: one feed's peak memory, not several mixed."""
  code = ('import json, sys; from ohc_jax.models import conv; conv.configure_xla_cpu(); '
          'from ohc_jax import benchmark; '
          'print(json.dumps(benchmark.input_case(*sys.argv[1:3], *map(int, sys.argv[3:]))))')
  env = dict(os.environ)
  # One device, each figure the same setup; XLA:CPU configured as a training run configures it
  # (cli.py), which makes the step about 1.5x faster and the feed's share of the CPU larger.
  env.pop('XLA_FLAGS', None)
  child = subprocess.run([sys.executable, '-c', code, mode, where, str(_BATCH.value),
                          str(_STEPS.value), str(_WARMUP.value)], env=env, capture_output=True,
                         text=True, check=False)
  if child.returncode != 0:
    lines = child.stderr.strip().splitlines() or ['(no output)']
    raise UsageError(f'--suite=input, {mode} over {where}: {lines[-1]}')
  return json.loads(child.stdout.strip().splitlines()[-1])


def suite_input() -> dict:
  cases = {'cifar10_memory': ('memory', _DATA_DIR.value),
           'cifar10_stream': ('stream', _DATA_DIR.value),
           'cifar10_stream_normal_priority': ('stream_normal', _DATA_DIR.value)}
  for name, where in (('cifar10_stream_png_records', _STREAM_DIR.value),
                      ('cifar10_stream_raw_records', _STREAM_RAW_DIR.value),
                      ('synthetic_1.2M_stream', _SYNTHETIC_DIR.value)):
    if where:
      cases[name] = ('stream', where)
  for mode, where in cases.values():
    if not os.path.isdir(where):
      raise UsageError(f'--suite=input: no folder {where}: give --data_dir (tfds), --stream_dir '
                       f'(launch/to_array_record.py), --stream_raw_dir (its --encoding=raw) or '
                       f'--synthetic_dir (launch/make_synthetic_images.py); the last three '
                       f'empty: left out')
  print(f'train step (simp encoder, K=10, batch {_BATCH.value}) fed by each input, '
        f'{_STEPS.value} steps after {_WARMUP.value}; {_REPEATS.value} rounds over the inputs, '
        f'each figure the median of its rounds (peak MB: the largest):')
  runs = {name: [] for name in cases}
  for _ in range(_REPEATS.value):  # Interleaved: a busy spell on a shared machine hits them all.
    for name, (mode, where) in cases.items():
      runs[name].append(_input_in_child(mode, where))
  print(f'{"input":>30} {"images/s":>9} {"peak MB":>8} {"resume@10% s":>13} {"resume@90% s":>13}')
  rows = {}
  for name, (mode, where) in cases.items():
    row = rows[name] = {key: (max if key == 'peak_rss_mb' else statistics.median)(
        run[key] for run in runs[name]) for key in runs[name][0]}
    row.update(mode=mode, data=where, images_per_s_runs=[r['images_per_s'] for r in runs[name]])
    resume = [f'{row[k]:13.2f}' if k in row else f'{"-":>13}'
              for k in ('first_batch_at_10%_s', 'first_batch_at_90%_s')]
    print(f'{name:>30} {row["images_per_s"]:9.0f} {row["peak_rss_mb"]:8.0f} {" ".join(resume)}',
          flush=True)
  memory, stream = rows['cifar10_memory'], rows['cifar10_stream']
  ratios = {}
  for name in rows:
    if name.startswith('cifar10_stream'):
      ratio = ratios[f'{name}_over_memory_images_per_s'] = (rows[name]['images_per_s'] /
                                                            memory['images_per_s'])
      print(f'{name} / memory images/s: {ratio:.1%} (target >= 90%)')
  if 'synthetic_1.2M_stream' in rows:
    ratios['synthetic_over_cifar10_stream_peak_rss'] = (
        rows['synthetic_1.2M_stream']['peak_rss_mb'] / stream['peak_rss_mb'])
    print(f'peak memory, 1.2M set / CIFAR-10, streaming: '
          f'{ratios["synthetic_over_cifar10_stream_peak_rss"]:.3f} (target <= 1.10, and < 2 GB: '
          f'{rows["synthetic_1.2M_stream"]["peak_rss_mb"]:.0f} MB)')
  return {'batch_size': _BATCH.value, 'steps': _STEPS.value, 'warmup': _WARMUP.value,
          'rows': rows, 'ratios': ratios}


def benchmark(flag_values, args) -> None:
  """The command: runs --suite and saves its figures (flag_values: the module's flags)."""
  del flag_values
  if args:
    raise UsageError(f'unexpected arguments {" ".join(args)}: write flags as --NAME=VALUE')
  import jax
  if _SUITE.value == 'scaling':
    jax.config.update('jax_num_cpu_devices', max(map(int, _DEVICES.value)))
  suites = {'train': suite_train, 'assign': suite_assign, 'scaling': suite_scaling,
            'input': suite_input}
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
  cli.main(benchmark)
