"""Either mode reads either tfds format (issue 23 item 2): a TFRecord set streams from an
ArrayRecord copy the cache makes once, an ArrayRecord set loads into memory through
tfds.data_source, with equal metrics all four ways; no training process imports TensorFlow, for
every kind of data set; a damaged tfds copy is one line naming the shard and leaves nothing in the
cache; a damaged cache entry is made again, with a warning (issue 24 items 9, 10)."""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ohc_jax.configuration import CONFIG_DIR
from tiny_tfds import prepare

pytestmark = pytest.mark.slow  # Starts processes that train or import TensorFlow.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Loads a data set as training does, reads a training and an evaluation batch, and says which
# TensorFlow modules the process holds.
_LOAD = '''
import json, sys
from ohc_jax import configuration
from ohc_jax import data as data_lib
config = configuration.from_file(sys.argv[1])
config.update(**json.loads(sys.argv[2]))
data = data_lib.load(config)
batch = next(data_lib.train_feed(data.train, 8, 0).epoch(1))
evaluated, _ = next(data_lib.eval_batches(data.eval, 8))
print(json.dumps({'mode': data_lib.input_mode(config), 'shape': list(batch['image'].shape),
                  'labels': evaluated['label'].tolist(), 'n': len(data.train),
                  'tf': sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')[:3]}))
'''
DEFAULT = os.path.join(CONFIG_DIR, 'default.py')
TINY = dict(dataset='tfds:tiny_images', num_clusters=3, batch_size=16, eval_batch_size=32,
            num_epochs=2, latent_dim=16, progress_bar=False, plots_every_epochs=0)


def _env(cache):
  return dict(os.environ, OHC_JAX_CACHE=str(cache), PYTHONPATH=REPO)


def _python(*args, env, check=True):
  out = subprocess.run([sys.executable, *map(str, args)], env=env, capture_output=True, text=True,
                       timeout=600, check=False)
  if check:
    assert out.returncode == 0, out.stderr[-3000:]
  return out


def _load(config_file, overrides, cache):
  out = _python('-c', _LOAD, config_file, json.dumps(overrides), env=_env(cache))
  return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@pytest.fixture(scope='module')
def data_dirs(tmp_path_factory):
  """(TFRecord data dir, ArrayRecord data dir) of tiny_images 1.0.0: train 96, test 32, 8x8 RGB,
  3 classes; the ArrayRecord copy written by launch/to_array_record.py."""
  root = tmp_path_factory.mktemp('formats')
  prepare(root / 'tfrecord', train=96, test=32)
  _python(os.path.join(REPO, 'launch', 'to_array_record.py'),
          root / 'tfrecord' / 'tiny_images' / '1.0.0', root / 'ar' / 'tiny_images' / '1.0.0',
          env=_env(root / 'unused'))
  return str(root / 'tfrecord'), str(root / 'ar')


def _metrics(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  return {k: {f: x for f, x in v.items() if 'per_s' not in f and 'seconds' not in f}
          for k, v in results.items() if isinstance(v, dict) and 'acc' in v}


def test_both_modes_read_both_formats_with_equal_metrics(data_dirs, tmp_path):
  results = {}
  for data_dir in data_dirs:
    for mode in ('memory', 'stream'):
      workdir = tmp_path / f'{os.path.basename(data_dir)}_{mode}'
      flags = [f'--config.{k}={v}' for k, v in TINY.items()]
      out = _python('-m', 'ohc_jax.main', f'--workdir={workdir}', *flags,
                    f'--config.data_dir={data_dir}', f'--config.input_mode={mode}',
                    env=_env(tmp_path / 'cache'), check=False)
      assert out.returncode == 0, out.stderr[-3000:]
      results[os.path.basename(data_dir), mode] = _metrics(workdir)
  first = results['tfrecord', 'memory']
  assert first and all(r == first for r in results.values()), results
  # The stream of the TFRecord set made one ArrayRecord copy, once, in the cache, images raw.
  copies = glob.glob(str(tmp_path / 'cache' / 'array_record' / '*' / 'tiny_images' / '1.0.0'))
  assert len(copies) == 1 and glob.glob(os.path.join(copies[0], '*.array_record-*'))
  with open(os.path.join(copies[0], 'features.json')) as f:
    assert 'Tensor' in json.dumps(json.load(f)['featuresDict']['features']['image'])


def _realdisp_dirs(root):
  """(manual_dir, data_dir) with 17 small synthetic logs in the UCI format."""
  manual = root / 'manual'
  manual.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for subject in range(1, 18):
    labels = np.repeat([subject, subject % 33 + 1], [300, 300])
    table = np.column_stack([np.arange(600), np.arange(600), rng.normal(size=(600, 117)).round(3),
                             labels])
    np.savetxt(manual / f'subject{subject}_ideal.log', table, fmt='%g', delimiter='\t')
  return str(manual), str(root / 'tfds')


def test_no_training_process_imports_tensorflow_for_any_kind_of_data(data_dirs, tmp_path):
  tfrecord, ar = data_dirs
  np.savez(tmp_path / 'v.npz', x=np.random.default_rng(0).normal(size=(40, 3)), y=np.arange(40) % 2)
  np.save(tmp_path / 'v.npy', np.random.default_rng(0).normal(size=(40, 3)))
  np.save(tmp_path / 'v_labels.npy', np.arange(40) % 2)
  from PIL import Image
  for c in ('cat', 'dog'):
    (tmp_path / 'folder' / c).mkdir(parents=True)
    for i in range(4):
      image = Image.fromarray(np.full((6, 6, 3), 60 * i, np.uint8))
      image.save(tmp_path / 'folder' / c / f'{i}.png')
  manual, realdisp_data = _realdisp_dirs(tmp_path / 'realdisp')
  kinds = {
      'digits': (DEFAULT, {}),
      'vectors npz': (DEFAULT, {'dataset': f'vectors:{tmp_path}/v.npz'}),
      'vectors npy stream': (DEFAULT, {'dataset': f'vectors:{tmp_path}/v.npy',
                                       'input_mode': 'stream'}),
      'folder': (DEFAULT, {'dataset': f'folder:{tmp_path}/folder'}),
      **{f'tfds {os.path.basename(d)} {mode}': (DEFAULT, dict(TINY, data_dir=d, input_mode=mode))
         for d in (tfrecord, ar) for mode in ('memory', 'stream')},
      'realdisp': (os.path.join(CONFIG_DIR, 'realdisp.py'),
                   {'data_dir': realdisp_data, 'manual_dir': manual}),
  }
  for kind, (config_file, overrides) in kinds.items():
    for run in ('first', 'cached'):
      loaded, _ = _load(config_file, overrides, tmp_path / 'cache')
      assert loaded['tf'] == [], (kind, run, loaded)
      assert loaded['mode'] == overrides.get('input_mode', 'memory'), (kind, loaded)
  assert loaded['shape'] == [8, 512, 117]  # RealDisp's windows, built in the child.


def _damage(data_dir, tmp_path, how):
  """A copy of the TFRecord set with its train shard deleted or cut to half."""
  broken = tmp_path / f'broken_{how}'
  shutil.copytree(data_dir, broken)
  shard, = glob.glob(str(broken / 'tiny_images' / '1.0.0' / '*-train.tfrecord-*'))
  if how == 'deleted':
    os.remove(shard)
  else:
    data = open(shard, 'rb').read()
    open(shard, 'wb').write(data[:len(data) // 2])
  return str(broken), os.path.basename(shard)


@pytest.mark.parametrize('how', ['deleted', 'truncated'])
@pytest.mark.parametrize('mode', ['memory', 'stream'])
def test_a_damaged_tfds_copy_is_one_line_naming_the_shard_and_leaves_no_temporary_folder(
    data_dirs, tmp_path, how, mode):
  broken, shard = _damage(data_dirs[0], tmp_path, how)
  workdir, cache = tmp_path / 'run', tmp_path / 'cache'
  flags = [f'--config.{k}={v}' for k, v in TINY.items()]
  out = _python('-m', 'ohc_jax.main', f'--workdir={workdir}', *flags, f'--config.data_dir={broken}',
                f'--config.input_mode={mode}', env=_env(cache), check=False)
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
  assert lines[0].startswith('error: tfds tiny_images: the shard ') and shard in lines[0], lines
  assert 'prepare tiny_images again' in lines[0]
  assert not glob.glob(str(cache / '*' / '*.tmp*')) and not glob.glob(str(cache / '*' / '*-*'))
  assert not workdir.exists() or not os.listdir(workdir)


def test_a_damaged_cache_entry_is_made_again_with_a_warning(data_dirs, tmp_path):
  tfrecord, _ = data_dirs
  cache = tmp_path / 'cache'
  memory = dict(TINY, data_dir=tfrecord, input_mode='memory')
  stream = dict(TINY, data_dir=tfrecord, input_mode='stream')
  whole = {m: _load(DEFAULT, o, cache)[0] for m, o in (('memory', memory), ('stream', stream))}
  images, = glob.glob(str(cache / 'tfds' / '*' / 'images.npy'))
  with open(images, 'r+b') as f:
    f.truncate(os.path.getsize(images) // 2)
  shard = glob.glob(str(cache / 'array_record' / '*' / 'tiny_images' / '1.0.0' /
                        '*-test.array_record-*'))[0]
  os.remove(shard)
  for mode, overrides in (('memory', memory), ('stream', stream)):
    loaded, stderr = _load(DEFAULT, overrides, cache)
    assert loaded == whole[mode]
    warning, = [line for line in stderr.splitlines() if line.startswith('warning:')]
    assert 'is damaged' in warning and 'making it again' in warning, stderr
    assert ('images.npy is' if mode == 'memory' else 'is missing') in warning
  for mode, overrides in (('memory', memory), ('stream', stream)):  # Whole again: no warning.
    loaded, stderr = _load(DEFAULT, overrides, cache)
    assert loaded == whole[mode] and 'warning:' not in stderr
