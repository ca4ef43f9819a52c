"""tfds splits decoded once and cached as .npy files, which later runs memory-map.

A split is decoded in a child process (`python -m ohc_jax.tfds_cache`), so TensorFlow never enters
the training process: it would add about 0.6 GB to its memory and seconds to its start. The cache
is keyed by the data set, split and feature keys and by the prepared files (names, sizes, times)
and tfds's version: re-preparing a data set or upgrading tfds decodes it again. Its location is
$OHC_JAX_CACHE, else ~/.cache/ohc_jax; deleting it is always safe. Writes are atomic (a temporary
directory renamed), so concurrent processes and killed runs leave no partial entry.
"""

import hashlib
import json
import os
import subprocess
import sys
from typing import Optional

import numpy as np

from ohc_jax.errors import UsageError

_FORMAT = 2  # Bumped when the cached files change form.


def cache_root() -> str:
  return os.path.join(os.environ.get('OHC_JAX_CACHE') or
                      os.path.join(os.path.expanduser('~'), '.cache', 'ohc_jax'), 'tfds')


def _data_dir(data_dir: Optional[str]) -> str:
  return os.path.abspath(os.path.expanduser(
      data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'))


def _key(name: str, split: str, image_key: str, label_key: str, data_dir: str) -> Optional[str]:
  """The cache key of a split, or None when the data set has no prepared files there."""
  root = os.path.join(data_dir, name)
  files = sorted((os.path.relpath(os.path.join(d, f), root), os.path.getsize(os.path.join(d, f)),
                  os.path.getmtime(os.path.join(d, f)))
                 for d, _, fs in os.walk(root) for f in fs if not f.startswith('.'))
  if not files:
    return None
  from importlib import metadata
  described = json.dumps([_FORMAT, name, split, image_key, label_key, files,
                          metadata.version('tensorflow-datasets')])
  slug = ''.join(c if c.isalnum() else '_' for c in f'{name}_{split}')[:60]
  return f'{slug}-{hashlib.sha256(described.encode()).hexdigest()[:16]}'


def _open(path: str):
  images = np.load(os.path.join(path, 'images.npy'), mmap_mode='r')
  labels = np.load(os.path.join(path, 'labels.npy'))
  with open(os.path.join(path, 'info.json')) as f:
    info = json.load(f)
  return images, labels, info


def load(name: str, split: str, data_dir: Optional[str] = None, download: bool = False,
         image_key: str = 'image', label_key: str = 'label'):
  """(images (memory-mapped, read-only), labels int64, info {'num_classes', 'names'}) of a tfds
  split, e.g. load('cifar10', 'train+test') (its parts one after the other; tfds itself would
  interleave them); decodes it (in a child process) if not cached. In a
  process that has imported tfds already (e.g. under tfds.testing.mock_data), decodes it there,
  into memory, uncached."""
  data_dir = _data_dir(data_dir)
  if 'tensorflow_datasets' in sys.modules:
    return _decode(name, split, data_dir, download, image_key, label_key, cache=False)
  key = _key(name, split, image_key, label_key, data_dir)
  if key and os.path.isfile(os.path.join(cache_root(), key, 'info.json')):
    return _open(os.path.join(cache_root(), key))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
  args = [sys.executable, '-m', 'ohc_jax.tfds_cache', name, split, data_dir, str(int(download)),
          image_key, label_key]
  child = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
  lines = child.stderr.strip().splitlines()
  if child.returncode == 2 and lines:
    raise UsageError(lines[-1].removeprefix('error: '))
  if child.returncode != 0:
    raise RuntimeError(f'decoding tfds {name}:{split} failed ({child.returncode}):\n'
                       f'{child.stderr[-3000:]}')
  return _open(child.stdout.strip().splitlines()[-1])


def _decode(name, split, data_dir, download, image_key, label_key, cache: bool):
  """Decodes a split: into the cache (returns the entry's path) or into memory (returns the
  arrays and info)."""
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
      builder.download_and_prepare()
    parts = [builder.as_dataset(split=part, shuffle_files=False) for part in split.split('+')]
  except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as e:
    raise UsageError(
        f'data set {name!r} is not prepared under {data_dir}: point --config.data_dir (or '
        f'TFDS_DATA_DIR) at a tfds data dir that holds it, or pass --config.download=True '
        f'({type(e).__name__})') from None
  features = builder.info.features
  for key, what in ((image_key, 'image'), (label_key, 'label')):
    if key not in features:
      raise UsageError(f'tfds {name} has no feature {key!r} (it has {", ".join(features)}): set '
                       f'the {what} key')
  label_feature = features[label_key]
  info = {'num_classes': int(getattr(label_feature, 'num_classes', 0) or 0),
          'names': list(label_feature.names) if hasattr(label_feature, 'names') else [],
          'version': str(builder.info.version)}
  count = sum(int(builder.info.splits[part].num_examples) for part in split.split('+'))
  if cache:
    target = os.path.join(cache_root(), _key(name, split, image_key, label_key, data_dir))
    tmp = f'{target}.tmp{os.getpid()}'
    os.makedirs(tmp, exist_ok=True)
  images, labels, done = None, np.empty(count, np.int64), 0
  ds = parts[0]
  for part in parts[1:]:
    ds = ds.concatenate(part)
  for x, y in tfds.as_numpy(ds.map(lambda e: (e[image_key], e[label_key])).batch(4096)):
    if images is None:  # Filled in place: the split is never held twice.
      shape = (count,) + x.shape[1:]
      images = (np.lib.format.open_memmap(os.path.join(tmp, 'images.npy'), 'w+', x.dtype, shape)
                if cache else np.empty(shape, x.dtype))
    images[done:done + len(x)], labels[done:done + len(x)] = x, y
    done += len(x)
  if done != count:
    raise UsageError(f'tfds {name}:{split} read {done} examples, its info says {count}: prepare '
                     f'it again (--config.download=True)')
  if not cache:
    return images, labels, info
  images.flush()
  del images
  np.save(os.path.join(tmp, 'labels.npy'), labels)
  with open(os.path.join(tmp, 'info.json'), 'w') as f:
    json.dump(info, f)
  try:
    os.replace(tmp, target)
  except OSError:  # Another process cached it first.
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
  return target


if __name__ == '__main__':
  try:
    print(_decode(*sys.argv[1:4], sys.argv[4] == '1', *sys.argv[5:7], cache=True))
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
