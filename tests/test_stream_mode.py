"""input_mode=stream: a tfds ArrayRecord set read by index gives the metrics memory mode gives on
the same arrays, resumes exactly after SIGKILL, is chosen by input_mode=auto by size, and split
over two processes each reads its own rows alone."""

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from tensorflow_datasets.proto import tf_example_pb2

from ohc_jax import configuration
from ohc_jax import data as data_lib
from ohc_jax.data import array_record, input_pipeline, pipeline, sources
from ohc_jax.run import checkpoints, train
from ohc_jax.configuration import CONFIG_DIR
from ohc_jax.errors import UsageError

pytestmark = pytest.mark.slow  # Trains models and starts processes.

REPO = os.path.dirname(CONFIG_DIR)
OVERRIDES = dict(dataset='tfds:tiny_stream', input_mode='stream', num_clusters=3, batch_size=16,
                 eval_batch_size=32, num_epochs=2, checkpoint_every_steps=3, log_every_steps=2,
                 latent_dim=16)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """tiny_stream 1.0.0 in ArrayRecord: train 96 points (2 shards), test 32; 8x8 RGB, 3 classes."""
  import tensorflow_datasets as tfds
  root = tmp_path_factory.mktemp('tfds')
  directory = root / 'tiny_stream' / '1.0.0'
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 128)
  images = np.clip(labels[:, None, None, None] * 80 + rng.integers(0, 60, (128, 8, 8, 3)), 0,
                   255).astype(np.uint8)
  for split, rows, shards in (('train', np.arange(96), 2), ('test', np.arange(96, 128), 1)):
    for index, part in enumerate(np.array_split(rows, shards)):
      array_record.write_records(
          array_record.shard_path(str(directory), 'tiny_stream', split, index, shards),
          array_record.encode_examples(images[part], labels[part]))
  features = tfds.features.FeaturesDict({'image': tfds.features.Image(shape=(8, 8, 3)),
                                         'label': tfds.features.ClassLabel(num_classes=3)})
  array_record.write_info(str(directory), 'tiny_stream', '1.0.0',
                          {'train': [48, 48], 'test': [32]}, features)
  return str(root)


def _config(data_dir, **overrides):
  c = configuration.from_file(os.path.join(CONFIG_DIR, 'default.py'))
  c.update(progress_bar=False, plots_every_epochs=0, data_dir=data_dir, **OVERRIDES)
  c.update(**overrides)
  return c


def _strip(results):
  return {k: ({f: x for f, x in v.items() if f != 'train_images_per_s'} if isinstance(v, dict)
              else v) for k, v in results.items()}


@pytest.fixture(scope='module')
def streamed(data_dir, tmp_path_factory):
  return train.train_and_evaluate(_config(data_dir), str(tmp_path_factory.mktemp('s') / 'run'))


def test_stream_gives_the_metrics_of_memory_mode_on_the_same_arrays(data_dir, streamed, tmp_path,
                                                                   monkeypatch):
  config = _config(data_dir)
  data = input_pipeline.load(config)
  assert isinstance(data.train, sources.ConcatSource) and len(data.train) == 128
  arrays = pipeline.read_rows(data.train, np.arange(128))
  split = sources.Split(arrays['image'], arrays['label'])
  in_memory = input_pipeline.Data(split, split, 3, data.scale, data.offset, data.class_names)
  monkeypatch.setattr(data_lib, 'load', lambda c: in_memory)
  memory = train.train_and_evaluate(_config(data_dir, input_mode='memory'), str(tmp_path / 'm'))
  assert _strip(memory) == _strip(streamed)
  assert streamed['num_train'] == 128 and streamed['final']['step'] == 16


def test_sigkill_and_rerun_in_stream_mode_gives_the_uninterrupted_results(data_dir, streamed,
                                                                          tmp_path):
  work = tmp_path / 'run'
  flags = [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  cmd = [sys.executable, '-m', 'ohc_jax.main', f'--workdir={work}', f'--config.data_dir={data_dir}',
         '--config.progress_bar=False', '--config.plots_every_epochs=0', *flags]
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  deadline = time.time() + 240
  while not any(s >= 11 for s in checkpoints.committed_steps(work)):  # Mid-epoch 2 (8 a epoch).
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert not (work / 'results.json').exists()
  rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert 'resuming from the checkpoint of step' in rerun.stdout
  assert _strip(json.loads((work / 'results.json').read_text())) == _strip(streamed)


def test_auto_streams_only_what_exceeds_the_memory_limit(data_dir):
  # 128 images of 8 x 8 x 3 bytes: 24,576 bytes decoded.
  assert input_pipeline.input_mode(_config(data_dir, input_mode='auto')) == 'memory'
  tight = _config(data_dir, input_mode='auto', max_host_memory_gb=20_000 / 2**30)
  assert input_pipeline.input_mode(tight) == 'stream'
  assert input_pipeline.input_mode(_config(data_dir, input_mode='auto', dataset='digits')) == 'memory'


def test_stream_mode_errors_name_the_fix(data_dir, tmp_path):
  with pytest.raises(UsageError, match='tfds tiny_stream is not prepared under'):
    input_pipeline.load(_config(str(tmp_path)))
  with pytest.raises(UsageError, match='max_examples is not available in stream mode'):
    input_pipeline.load(_config(data_dir, max_examples=10))
  with pytest.raises(UsageError, match='streams tfds data sets, not'):
    input_pipeline.load(_config(data_dir, dataset='digits'))


def test_a_streaming_run_loads_no_tensorflow(data_dir, tmp_path):
  """Records are read by tfds's data source and parsed by its own message class, without
  TensorFlow: ~0.5 GB less per process."""
  script = f"""
import sys
from ohc_jax import configuration
from ohc_jax.run import train
c = configuration.from_file(configuration.config_path('default'))
c.update(progress_bar=False, plots_every_epochs=0, data_dir={data_dir!r}, **{OVERRIDES!r})
c.num_epochs = 1
train.train_and_evaluate(c, {str(tmp_path / 'run')!r})
print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))
"""
  proc = subprocess.run([sys.executable, '-c', script], cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().splitlines()[-1] == '[]'


def test_a_single_pass_evaluated_every_few_steps(data_dir, tmp_path):
  """The online setting: one pass over the stream, evaluated within it on the held-out split,
  training unchanged by the evaluations."""
  single = dict(num_epochs=1, protocol='holdout')  # 96 train points: 6 steps of 16.
  plain = train.train_and_evaluate(_config(data_dir, **single), str(tmp_path / 'plain'))
  every = train.train_and_evaluate(_config(data_dir, eval_every_steps=2, **single),
                                   str(tmp_path / 'every'))
  records = [json.loads(line) for line in (tmp_path / 'every' / 'metrics.jsonl').open()]
  assert [(r['step'], r.get('partial', False)) for r in records] == [
      (2, True), (4, True), (6, False)]
  assert all(sum(r['hard_sizes']) == 32 for r in records)  # The test split, every time.
  assert _strip(every)['final'] == _strip(plain)['final']


def _set_with_a_bad_record(tmp_path, bad=40):
  """tiny_stream with one split of 64 images whose record `bad` is not a PNG."""
  directory = tmp_path / 'tiny_stream' / '1.0.0'
  rng = np.random.default_rng(1)
  images, labels = rng.integers(0, 256, (64, 8, 8, 3), np.uint8), rng.integers(0, 3, 64)
  records = list(array_record.encode_examples(images, labels))
  broken = tf_example_pb2.Example.FromString(records[bad])
  broken.features.feature['image'].bytes_list.value[0] = b'not a png'
  records[bad] = broken.SerializeToString()
  array_record.write_records(array_record.shard_path(str(directory), 'tiny_stream', 'train', 0, 1),
                             records)
  array_record.write_info(str(directory), 'tiny_stream', '1.0.0', {'train': [64]},
                          array_record.image_features((8, 8, 3), 3))


def test_a_record_that_does_not_decode_stops_the_run_then_skipping_resumes_it(tmp_path):
  """One line naming the data set and the fix, and no checkpoint past the last step that ran;
  rerun with skip_bad_records, the run resumes and gives what a run skipping from the start
  gives, the stand-ins and left-out records counted."""
  _set_with_a_bad_record(tmp_path)
  config = _config(str(tmp_path), eval_split='train', checkpoint_every_steps=1, num_epochs=2)
  with pytest.raises(UsageError, match=r'tiny_stream.*record 40 does not decode.*skip_bad_records'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  failing = int(np.flatnonzero(pipeline.epoch_permutation(64, config.seed, 1) == 40)[0]) // 16
  assert max(checkpoints.committed_steps(tmp_path / 'run'), default=0) <= failing
  assert not (tmp_path / 'run' / 'results.json').exists()

  config.skip_bad_records = True
  resumed = train.train_and_evaluate(config, str(tmp_path / 'run'))
  fresh = train.train_and_evaluate(config, str(tmp_path / 'fresh'))
  assert _strip(resumed) == _strip(fresh)
  in_batches = sum(bool(np.isin(40, pipeline.epoch_permutation(64, config.seed, e)[:64]))
                   for e in (1, 2))  # 4 steps of 16: every point, each epoch.
  assert fresh['final']['skipped_records'] == {'train': in_batches, 'eval': 1} == {'train': 2,
                                                                                   'eval': 1}
  assert sum(fresh['final']['hard_sizes']) == 63  # Left out of the evaluation.
  with pytest.raises(UsageError, match='skip_bad_records .* set --config.input_mode=stream'):
    input_pipeline.load(_config(str(tmp_path), input_mode='memory', skip_bad_records=True))


def test_skipping_gives_the_run_without_the_bad_record_its_stand_in_aside(tmp_path):
  """A stand-in is the next record that decodes: batch for batch, the run reads what it would read
  if record 40 were a copy of record 41."""
  _set_with_a_bad_record(tmp_path)
  source = input_pipeline.load(_config(str(tmp_path), eval_split='train',
                                       skip_bad_records=True)).train
  got = source.read(np.array([39, 40, 41, 63]))
  np.testing.assert_array_equal(got['skipped'], [False, True, False, False])
  np.testing.assert_array_equal(got['image'][1], got['image'][2])
  assert got['label'][1] == got['label'][2]


# ohc_jax.main with every ImageSource.read logged: `python DRIVER LOG FLAGS...` appends a line
# [split, rows] to LOG for each read, then runs as `python -m ohc_jax.main FLAGS...` does (the
# test below logs its in-process run the same way).
_LOGGING_MAIN = """
import json
import sys
import threading

from ohc_jax import cli  # First, as in ohc_jax.main: quiets TensorFlow and XLA.
from ohc_jax import main
from ohc_jax.data import pipeline, sources

log, lock = open(sys.argv.pop(1), 'a'), threading.Lock()
init, read = sources.ImageSource.__init__, sources.ImageSource.read


def logged_init(self, dataset_dir, split, *args, **kwargs):
  init(self, dataset_dir, split, *args, **kwargs)
  self.logged_split = split


def logged_read(self, rows):
  with lock:  # Batches are read on a thread pool.
    log.write(json.dumps([self.logged_split, [int(r) for r in rows]]) + '\\n')
    log.flush()
  return read(self, rows)


sources.ImageSource.__init__, sources.ImageSource.read = logged_init, logged_read
# Each batch read once: the feeds stay on idle CPU time however long they wait for it (turning to
# normal priority, pipeline._prefetched reads anew the batches it had read ahead).
pipeline.STARVED_S = float('inf')
cli.main(main.train, main.parse_flags)
"""


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  try:
    for s in sockets:
      s.bind(('127.0.0.1', 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def _reads(log):
  """{split: [rows of each read, as a tuple]} of a read log."""
  reads = collections.defaultdict(list)
  for line in log.read_text().splitlines():
    split, rows = json.loads(line)
    reads[split].append(tuple(rows))
  return reads


def _by_batch(reads, batches):
  """{k: the read of batches[k]}: each read lies within a batch (the first one not yet matched,
  reads being logged in order but for the few read ahead), one read a batch."""
  matched = {}
  for r in reads:
    k = next((k for k, b in enumerate(batches) if k not in matched and set(r) <= set(b)), None)
    assert k is not None, f'read {r} is in no batch, or in one already read'
    matched[k] = r
  assert sorted(matched) == list(range(len(batches))), sorted(matched)
  return matched


def test_two_processes_stream_their_own_rows_and_match_one_process(data_dir, tmp_path,
                                                                    monkeypatch):
  """Two processes on loopback (2 CPU devices each) in stream mode, run twice, and one process
  with 4 devices: each of the two reads only its part of every global batch (training) and of
  every evaluation batch, the parts making the batches; the runs give the same numbers."""
  # holdout: training reads only the train split (96: 6 steps of 16), evaluation only the test
  # split (32: batches 12, 12 and a padded 8), so each read's split says what it was for.
  overrides = dict(OVERRIDES, protocol='holdout', eval_batch_size=12)
  flags = [f'--config.{k}={v}' for k, v in overrides.items()] + [
      f'--config.data_dir={data_dir}', '--config.progress_bar=False',
      '--config.plots_every_epochs=0']  # Plots would read the evaluation split.
  (tmp_path / 'logging_main.py').write_text(_LOGGING_MAIN)
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')

  def start(name, process, port):
    out = tmp_path / f'{name}{process}'  # .reads, .out, .err: not pipes, which could fill.
    with open(f'{out}.out', 'w') as stdout, open(f'{out}.err', 'w') as stderr:
      return subprocess.Popen(
          [sys.executable, str(tmp_path / 'logging_main.py'), f'{out}.reads',
           f'--workdir={tmp_path / name}', *flags, '--config.distributed=True',
           f'--config.coordinator_address=127.0.0.1:{port}', '--config.num_processes=2',
           f'--config.process_id={process}'], cwd=REPO, env=env, stdout=stdout, stderr=stderr)

  names = ('multi', 'again')  # Both pairs at once, and meanwhile the single process here.
  procs = {(name, i): start(name, i, port)
           for name, port in zip(names, _free_ports(2)) for i in range(2)}
  try:
    single_reads, lock = collections.defaultdict(list), threading.Lock()
    init, read = sources.ImageSource.__init__, sources.ImageSource.read

    def logged_init(self, dataset_dir, split, *args, **kwargs):
      init(self, dataset_dir, split, *args, **kwargs)
      self.logged_split = split

    def logged_read(self, rows):
      with lock:
        single_reads[self.logged_split].append(tuple(int(r) for r in rows))
      return read(self, rows)

    monkeypatch.setattr(sources.ImageSource, '__init__', logged_init)
    monkeypatch.setattr(sources.ImageSource, 'read', logged_read)
    monkeypatch.setattr(pipeline, 'STARVED_S', float('inf'))  # As in _LOGGING_MAIN.
    train.train_and_evaluate(_config(data_dir, num_devices=4, **overrides),
                             str(tmp_path / 'single'))
    for (name, i), proc in procs.items():
      proc.wait(timeout=300)
      assert proc.returncode == 0, (f'{name} process {i}: '
                                    f'{(tmp_path / f"{name}{i}.err").read_text()[-3000:]}')
  finally:  # A process that failed can leave its partner waiting for it.
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  results = {name: json.loads((tmp_path / name / 'results.json').read_text())
             for name in (*names, 'single')}

  seed, epochs = _config(data_dir).seed, overrides['num_epochs']
  train_batches = [pipeline.epoch_permutation(96, seed, epoch).reshape(6, 16)[step]
                   for epoch in range(1, epochs + 1) for step in range(6)]
  eval_batches = [np.arange(start, min(start + 12, 32)) for start in (0, 12, 24)] * epochs
  for name in names:
    reads = [_reads(tmp_path / f'{name}{i}.reads') for i in range(2)]
    assert all(set(r) == {'train', 'test'} for r in reads)
    for batches, split, local in ((train_batches, 'train', 8), (eval_batches, 'test', 6)):
      mine = [_by_batch(r[split], batches) for r in reads]  # Nothing read beyond the batches.
      for k, batch in enumerate(batches):
        first, second = mine[0][k], mine[1][k]
        assert not set(first) & set(second) and set(first) | set(second) == set(batch)
        assert first == tuple(batch[:local]) and second == tuple(batch[local:])  # In order.
      size, per_epoch = len(set().union(*batches)), len(batches) // epochs
      for epoch in range(epochs):  # Each reads part of the split; the two, all of it.
        rows = [set().union(*(m[k] for k in range(epoch * per_epoch, (epoch + 1) * per_epoch)))
                for m in mine]
        assert not rows[0] & rows[1] and len(rows[0] | rows[1]) == size
        assert 0 < len(rows[0]) < size and 0 < len(rows[1]) < size
  assert sorted(single_reads['train']) == sorted(map(tuple, train_batches))  # Whole batches.
  assert sorted(single_reads['test']) == sorted(map(tuple, eval_batches))

  assert _strip(results['multi']) == _strip(results['again'])
  multi, one = results['multi']['final'], results['single']['final']
  assert multi['step'] == one['step'] == 12 and sum(one['hard_sizes']) == 32
  assert multi['train_loss'] == pytest.approx(one['train_loss'], rel=1e-5)
  assert multi['hard_sizes'] == one['hard_sizes']
  assert multi['acc'] == one['acc'] and multi['nmi'] == pytest.approx(one['nmi'])


def test_a_bad_record_in_one_of_two_processes_stops_both_then_skipping_resumes(tmp_path):
  """The process that reads record 40 names it, the other names that process; both exit 2 at
  once (no process waits in a collective), no checkpoint is past the failing step, and a rerun
  of both with skip_bad_records resumes and finishes."""
  _set_with_a_bad_record(tmp_path)
  work = tmp_path / 'run'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  flags = [f'--config.{k}={v}' for k, v in OVERRIDES.items()] + [
      f'--workdir={work}', f'--config.data_dir={tmp_path}', '--config.progress_bar=False',
      '--config.plots_every_epochs=0', '--config.eval_split=train',
      '--config.checkpoint_every_steps=1', '--config.distributed=True',
      '--config.num_processes=2']

  def run_both(*more):
    port = _free_ports(1)[0]
    procs = [subprocess.Popen([sys.executable, '-m', 'ohc_jax.main', *flags, *more,
                               f'--config.coordinator_address=127.0.0.1:{port}',
                               f'--config.process_id={i}'], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
              for i in range(2)]
    try:
      return [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    finally:
      for p in procs:
        p.kill()

  (code0, err0), (code1, err1) = run_both()
  position = int(np.flatnonzero(pipeline.epoch_permutation(64, 0, 1) == 40)[0])
  reader = position % 16 // 8  # The process whose half of the batch holds record 40.
  errors = [err0, err1]
  assert code0 == code1 == 2 and not any('Traceback' in e for e in errors)
  assert 'record 40 does not decode' in errors[reader].strip().splitlines()[-1]
  assert errors[1 - reader].strip().splitlines()[-1].startswith(
      f'error: process {reader} could not read its input')
  assert max(checkpoints.committed_steps(work), default=0) <= position // 16
  assert [c for c, _ in run_both('--config.skip_bad_records=True')] == [0, 0]
  final = json.loads((work / 'results.json').read_text())['final']
  assert final['skipped_records'] == {'train': 2, 'eval': 1} and final['step'] == 8
