"""input_mode=stream on vectors:FILE.npy: the file memory-mapped and read batch by batch gives the
results memory mode gives; auto picks it by the file's size; .npz and bad arrays are one-line
errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ohc_jax import configuration
from ohc_jax.data import input_pipeline, sources
from ohc_jax.run import train
from ohc_jax.configuration import CONFIG_DIR
from ohc_jax.errors import UsageError

REPO = os.path.dirname(CONFIG_DIR)
SMALL = dict(num_clusters=10, batch_size=32, eval_batch_size=64, num_epochs=2, probe_every=1,
             checkpoint_every_steps=5)


def _config(path, **overrides):
  c = configuration.from_file(os.path.join(CONFIG_DIR, 'default.py'))
  c.update(progress_bar=False, plots_every_epochs=0, dataset=f'vectors:{path}', **overrides)
  return c


def _save(tmp_path, n=400):
  """The first n digits as float64 vectors (converted per batch) with string labels ('d0'...)."""
  from sklearn.datasets import load_digits
  digits = load_digits()
  path = tmp_path / 'digits.npy'
  np.save(path, digits.data[:n].astype(np.float64))
  np.save(tmp_path / 'digits_labels.npy', np.char.add('d', digits.target[:n].astype(str)))
  return path


def _strip(record):
  """A results or metrics record without its timing."""
  return {k: _strip(v) if isinstance(v, dict) else v for k, v in record.items()
          if k != 'train_images_per_s'}


def _rss() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


@pytest.mark.slow
def test_stream_gives_the_results_of_memory_mode(tmp_path):
  path = _save(tmp_path)
  memory = train.train_and_evaluate(_config(path, input_mode='memory', **SMALL),
                                    str(tmp_path / 'memory'))
  streamed = train.train_and_evaluate(_config(path, input_mode='stream', **SMALL),
                                      str(tmp_path / 'stream'))
  assert _strip(streamed) == _strip(memory)
  assert memory['num_train'] == memory['num_eval'] == 400 and memory['final']['step'] == 24
  lines = [[json.loads(line) for line in (tmp_path / run / 'metrics.jsonl').open()]
           for run in ('memory', 'stream')]
  assert [_strip(r) for r in lines[0]] == [_strip(r) for r in lines[1]]


def test_the_file_is_memory_mapped_and_a_batch_reads_only_its_rows(tmp_path):
  path = tmp_path / 'big.npy'
  x = np.lib.format.open_memmap(path, 'w+', np.float64, (2**15, 1024))  # 256 MiB, sparse.
  x[[5, 700, 30_000]] = np.arange(3)[:, None] + 1.5
  del x
  np.save(tmp_path / 'big_labels.npy', np.arange(2**15) % 7 * 10)
  before = _rss()
  data = input_pipeline.load(_config(path, input_mode='stream'))
  assert data.train is data.eval and isinstance(data.train, sources.ArraySource)
  assert isinstance(data.train.images, np.memmap) and data.train.dtype == np.float32
  assert data.num_classes == 7 and data.class_names == tuple(str(10 * c) for c in range(7))
  assert (data.scale, data.offset) == (1.0, 0.0)
  batch = data.train.read(np.array([30_000, 5, 6, 700]))
  assert batch['image'].dtype == np.float32 and batch['image'].shape == (4, 1024)
  np.testing.assert_array_equal(batch['image'][:, 0], [3.5, 1.5, 0, 2.5])
  np.testing.assert_array_equal(batch['label'], [30_000 % 7, 5, 6, 0])
  assert _rss() - before < 32 * 2**20  # Reading it all would map 256 MiB.


def test_auto_streams_a_npy_file_over_the_memory_limit(tmp_path):
  path = _save(tmp_path, n=50)  # 50 x 64 float64: 25,600 bytes.
  np.savez(tmp_path / 'digits.npz', x=np.load(path), y=np.load(tmp_path / 'digits_labels.npy'))
  auto = lambda p, gb: _config(p, input_mode='auto', max_host_memory_gb=gb)
  assert input_pipeline.input_mode(auto(path, 16)) == 'memory'
  assert input_pipeline.input_mode(auto(path, 20_000 / 2**30)) == 'stream'
  assert input_pipeline.input_mode(auto(tmp_path / 'digits.npz', 1e-6)) == 'memory'
  assert isinstance(input_pipeline.load(auto(path, 1e-6)).train, sources.ArraySource)
  assert isinstance(input_pipeline.load(auto(path, 16)).train, sources.Split)


@pytest.mark.parametrize('x, labels, message', [
    (np.zeros((4, 2, 2)), np.arange(4), r'x must be a numeric \(points, features\) array'),
    (np.array([['a', 'b']] * 4), np.arange(4), 'x must be a numeric'),
    (np.zeros((4, 2)), np.arange(3), 'x has 4 rows and y 3 labels, so row 3 has no partner'),
    (np.zeros((4, 2)), np.zeros((4, 1), int), 'labels must be a 1-D array'),
    (np.zeros((4, 2)), None, 'needs its labels in'),
])
def test_bad_arrays_are_one_line_errors(tmp_path, x, labels, message):
  np.save(tmp_path / 'v.npy', x)
  if labels is not None:
    np.save(tmp_path / 'v_labels.npy', labels)
  with pytest.raises(UsageError, match=message) as error:
    input_pipeline.load(_config(tmp_path / 'v.npy', input_mode='stream'))
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('dataset, overrides, message', [
    ('v.npz', {}, r'cannot be streamed \(a .npz is a zip.*save x as FILE.npy and the labels as '
                  r'FILE_labels.npy .* or set --config.input_mode=memory'),
    ('v.npy', dict(max_examples=10), 'max_examples is not available in stream mode'),
    ('v.npy', dict(imbalance=1), 'imbalance is not available in stream mode'),
])
def test_what_stream_mode_refuses(tmp_path, dataset, overrides, message):
  np.savez(tmp_path / 'v.npz', x=np.zeros((4, 2)), y=np.arange(4))
  np.save(tmp_path / 'v.npy', np.zeros((4, 2)))
  np.save(tmp_path / 'v_labels.npy', np.arange(4))
  with pytest.raises(UsageError, match=message) as error:
    input_pipeline.load(_config(tmp_path / dataset, input_mode='stream', **overrides))
  assert '\n' not in str(error.value)


@pytest.mark.slow
def test_the_command_line_streams_a_npy_file(tmp_path):
  path = _save(tmp_path, n=100)
  np.savez(tmp_path / 'digits.npz', x=np.load(path), y=np.load(tmp_path / 'digits_labels.npy'))
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop('XLA_FLAGS', None)
  run = lambda dataset, work: subprocess.run(
      [sys.executable, '-m', 'ohc_jax.main', f'--workdir={tmp_path / work}',
       f'--config.dataset=vectors:{dataset}', '--config.input_mode=stream',
       '--config.num_epochs=1', '--config.batch_size=32', '--config.plots_every_epochs=0',
       '--config.progress_bar=False'], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=300)
  ok = run(path, 'run')
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert json.loads((tmp_path / 'run' / 'results.json').read_text())['num_train'] == 100
  refused = run(tmp_path / 'digits.npz', 'refused')
  assert refused.returncode == 2 and 'Traceback' not in refused.stderr
  last = refused.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'cannot be streamed' in last
