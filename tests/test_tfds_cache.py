"""tfds splits decoded once in a child process and memory-mapped from the cache afterwards: the
same arrays as decoding in-process, TensorFlow never in the reading process, a re-prepared data set
decoded again, one-line errors, a killed writer's temporary folder removed by the next run."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ohc_jax.data import cache, tfds_cache
from ohc_jax.errors import UsageError
from tiny_tfds import prepare

pytestmark = pytest.mark.slow  # Starts processes that import TensorFlow.

_READ = '''
import json, sys
from ohc_jax.data import tfds_cache
x, y, info = tfds_cache.load('tiny_images', ['train', 'test'], sys.argv[1], 'fix', 'label')
print(json.dumps({'x': x.tolist(), 'y': y.tolist(), 'info': info, 'memmap': type(x).__name__,
                  'writeable': bool(x.flags.writeable),
                  'tf': sorted(m for m in sys.modules if m.startswith('tensorflow'))[:3]}))
'''


def _run(code, *args, env):
  out = subprocess.run([sys.executable, '-c', code, *map(str, args)], env=env, capture_output=True,
                       text=True, check=True)
  return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ''


def test_decoded_once_cached_and_equal_to_decoding_in_process(tmp_path):
  env = dict(os.environ, OHC_JAX_CACHE=str(tmp_path / 'cache'))
  data = tmp_path / 'data'
  prepare(data, train=40, test=24)
  first = json.loads(_run(_READ, data, env=env))
  entries = os.listdir(tmp_path / 'cache' / 'tfds')
  assert len(entries) == 1 and first['tf'] == [] and first['memmap'] == 'memmap'
  assert not first['writeable']
  assert first['info'] == {'sizes': [40, 24], 'num_classes': 3, 'names': ['a', 'b', 'c']}
  images = np.load(tmp_path / 'cache' / 'tfds' / entries[0] / 'images.npy')
  os.utime(tmp_path / 'cache' / 'tfds' / entries[0] / 'info.json')
  assert json.loads(_run(_READ, data, env=env)) == first  # From the cache: no child, no TF.
  # In a process with tfds loaded: decoded there, the same arrays (train, then test).
  import tensorflow_datasets  # pylint: disable=unused-import,import-outside-toplevel
  x, y, info = tfds_cache.load('tiny_images', ['train', 'test'], str(data), 'fix', 'label')
  np.testing.assert_array_equal(x, images)
  assert y.tolist() == first['y'] and info == first['info']
  train, _, _ = tfds_cache.load('tiny_images', ['train'], str(data), 'fix', 'label')
  np.testing.assert_array_equal(train, x[:40])
  # Prepared again with other images: a new key, decoded again.
  shutil.rmtree(data / 'tiny_images')
  prepare(data, train=41, test=24, seed=1)
  second = json.loads(_run(_READ, data, env=env))
  assert second['info']['sizes'] == [41, 24] and second['x'] != first['x']
  assert len(os.listdir(tmp_path / 'cache' / 'tfds')) == 2


def test_missing_data_set_and_feature_are_one_line_errors(tmp_path, monkeypatch):
  monkeypatch.setenv('OHC_JAX_CACHE', str(tmp_path / 'cache'))
  monkeypatch.delitem(sys.modules, 'tensorflow_datasets', raising=False)  # Through the child.
  with pytest.raises(UsageError, match=r"^tfds has no data set 'nothere': use a name of the tfds "
                                       r"catalog \(https://[^ ]+\)$"):
    tfds_cache.load('nothere', ['train'], str(tmp_path), 'point at it', 'label')
  assert not (tmp_path / 'cache' / 'tfds').exists() or not os.listdir(tmp_path / 'cache' / 'tfds')


_READ_RESIZED = '''
import json, sys
from ohc_jax.data import tfds_cache
x, _, info = tfds_cache.load('tiny_images', ['train'], sys.argv[1], 'fix', 'label', image_size=4)
print(json.dumps({'shape': x.shape, 'sizes': info['sizes'],
                  'tf': sorted(m for m in sys.modules if m.startswith('tensorflow'))[:3]}))
'''


def test_images_resized_in_the_child_and_cached_by_size(tmp_path):
  env = dict(os.environ, OHC_JAX_CACHE=str(tmp_path / 'cache'))
  data = tmp_path / 'data'
  prepare(data, train=40, test=24)
  read = json.loads(_run(_READ_RESIZED, data, env=env))
  assert read == {'shape': [40, 4, 4, 3], 'sizes': [40], 'tf': []}
  _run(_READ, data, env=env)  # The stored size: an entry of its own.
  entries = os.listdir(tmp_path / 'cache' / 'tfds')
  assert len(entries) == 2
  resized = [np.load(tmp_path / 'cache' / 'tfds' / e / 'images.npy') for e in entries]
  import tensorflow_datasets  # pylint: disable=unused-import,import-outside-toplevel
  x, _, _ = tfds_cache.load('tiny_images', ['train'], str(data), 'fix', 'label', image_size=4)
  assert any(r.shape == x.shape and np.array_equal(r, x) for r in resized)


def test_missing_split_names_the_splits_there_are(tmp_path, monkeypatch):
  monkeypatch.setenv('OHC_JAX_CACHE', str(tmp_path / 'cache'))
  prepare(tmp_path, train=40, test=24)
  monkeypatch.delitem(sys.modules, 'tensorflow_datasets', raising=False)  # Through the child.
  with pytest.raises(UsageError, match=r"^tfds tiny_images has no split 'validation' \(it has "
                                       r"(train, test|test, train)\): set --config.train_split="):
    tfds_cache.load('tiny_images', ['train', 'validation'], str(tmp_path), 'fix', 'label')


def test_a_killed_writers_temporary_folder_is_removed_and_a_live_writers_kept(tmp_path,
                                                                               monkeypatch):
  """The temporary folder of a child killed mid-decode (its PID dead) is removed by the next run,
  which decodes the entry anew; a live writer's (this process) and another host's are left."""
  monkeypatch.setenv('OHC_JAX_CACHE', str(tmp_path / 'cache'))
  prepare(tmp_path / 'data', train=40, test=24)
  monkeypatch.delitem(sys.modules, 'tensorflow_datasets', raising=False)  # Through the child.
  x, y, _ = tfds_cache.load('tiny_images', ['train'], str(tmp_path / 'data'), 'fix', 'label')
  x = np.array(x)
  entry, = (tmp_path / 'cache' / 'tfds').iterdir()
  shutil.rmtree(entry)
  killed = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  killed.kill()
  killed.wait()
  dead, live = (cache._temporary(str(entry), pid) for pid in (killed.pid, os.getpid()))
  elsewhere = f'{entry}.tmp{killed.pid}@another-host'
  for folder in (dead, live, elsewhere):
    os.makedirs(folder)
    with open(os.path.join(folder, 'images.npy'), 'wb') as f:
      f.write(b'half written')
  again, y_again, _ = tfds_cache.load('tiny_images', ['train'], str(tmp_path / 'data'), 'fix',
                                      'label')
  np.testing.assert_array_equal(again, x)
  np.testing.assert_array_equal(y_again, y)
  assert sorted(os.listdir(entry.parent)) == sorted(
      os.path.basename(p) for p in (entry, live, elsewhere))
