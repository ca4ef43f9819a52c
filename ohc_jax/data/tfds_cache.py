"""tfds splits decoded once and cached as .npy files, which later runs memory-map.

A split is decoded in a child process (`python -m ohc_jax.data.tfds_cache`), so TensorFlow never enters
the training process: it would add about 0.6 GB to its memory and seconds to its start. The cache
is keyed by the data set, splits, feature keys and image size and by the prepared files (names,
sizes, times) and tfds's version: re-preparing a data set or upgrading tfds decodes it again. Its
location is $OHC_JAX_CACHE, else ~/.cache/ohc_jax; deleting it is always safe. Writes are atomic (a
temporary directory renamed), so concurrent processes and killed runs leave no partial entry.
"""

import hashlib
import json
import os
import subprocess
import sys
from typing import Optional, Sequence

import numpy as np

from ohc_jax.errors import UsageError, first_line

_FORMAT = 3  # Bumped when the cached files change form or content (3: readers.resize_crop).


def cache_root() -> str:
  return os.path.join(os.environ.get('OHC_JAX_CACHE') or
                      os.path.join(os.path.expanduser('~'), '.cache', 'ohc_jax'), 'tfds')


def _data_dir(data_dir: Optional[str]) -> str:
  data_dir = data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  return data_dir if '://' in data_dir else os.path.abspath(os.path.expanduser(data_dir))


def _root(name: str, data_dir: str) -> str:
  """Where tfds keeps the prepared files of `name` ('NAME', 'NAME/CONFIG', either ':VERSION')."""
  base, _, version = name.partition(':')
  versioned = os.path.join(data_dir, base, version)
  return versioned if version and os.path.isdir(versioned) else os.path.join(data_dir, base)


def _key(name: str, splits: str, image_key: str, label_key: Optional[str], image_size: int,
         data_dir: str) -> Optional[str]:
  """The cache key of a read, or None when the data set has no prepared files there."""
  root = _root(name, data_dir)
  files = sorted((os.path.relpath(os.path.join(d, f), root), os.path.getsize(os.path.join(d, f)),
                  os.path.getmtime(os.path.join(d, f)))
                 for d, _, fs in os.walk(root) for f in fs if not f.startswith('.'))
  if not files:
    return None
  from importlib import metadata
  described = json.dumps([_FORMAT, name, splits, image_key, label_key, image_size, files,
                          metadata.version('tensorflow-datasets')])
  slug = ''.join(c if c.isalnum() else '_' for c in f'{name}_{splits}')[:60]
  return f'{slug}-{hashlib.sha256(described.encode()).hexdigest()[:16]}'


def _open(path: str):
  images = np.load(os.path.join(path, 'images.npy'), mmap_mode='r')
  labels_path = os.path.join(path, 'labels.npy')
  labels = np.load(labels_path) if os.path.exists(labels_path) else None
  with open(os.path.join(path, 'info.json')) as f:
    info = json.load(f)
  return images, labels, info


def load(name: str, splits: Sequence[str], data_dir: Optional[str], fix: str,
         label_key: Optional[str] = None, download: bool = False, image_key: str = 'image',
         image_size: int = 0):
  """(images (memory-mapped, read-only), labels (int64) or None, info {'sizes', 'num_classes',
  'names'}) of the splits of a tfds data set, one after the other (tfds's own 'a+b' would
  interleave them); decoded in a child process if not cached. image_size N > 0 resizes each image
  there (`_resize`), so a set of large or variable-size images never enters memory at full size.
  A process that has imported tfds already (e.g. under tfds.testing.mock_data) decodes them
  itself, into memory, uncached, as does one reading a remote data dir (gs://...). `fix` ends the error when the data is not there."""
  data_dir = _data_dir(data_dir)
  args = [name, '+'.join(splits), data_dir, fix, label_key or '', str(int(download)), image_key,
          str(image_size)]
  if 'tensorflow_datasets' in sys.modules or '://' in data_dir:  # Remote data: no files to key.
    return _decode(*args, cache=False)
  key = _key(name, args[1], image_key, label_key, image_size, data_dir)
  if key and os.path.isfile(os.path.join(cache_root(), key, 'info.json')):
    return _open(os.path.join(cache_root(), key))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
  child = subprocess.run([sys.executable, '-m', 'ohc_jax.data.tfds_cache', *args], env=env,
                         capture_output=True, text=True, check=False)
  lines = child.stderr.strip().splitlines()
  if child.returncode == 2 and lines:
    raise UsageError(lines[-1].removeprefix('error: '))
  if child.returncode != 0:
    raise RuntimeError(f'decoding tfds {name}:{args[1]} failed ({child.returncode}):\n'
                       f'{child.stderr[-3000:]}')
  return _open(child.stdout.strip().splitlines()[-1])


def _resize(image, size: int):
  """readers.resize_crop in tf.data (one resize for memory and stream mode)."""
  import tensorflow as tf
  from ohc_jax.data import readers
  resized = tf.numpy_function(lambda x: readers.resize_crop(x, size), [image], tf.uint8,
                              stateful=False)
  return tf.ensure_shape(resized, (size, size, image.shape[-1]))


def _decode(name, splits, data_dir, fix, label_key, download, image_key, image_size,
            cache: bool):
  """Decodes the splits: into the cache (returns the entry's path) or into memory (returns
  load's triple)."""
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  import tensorflow_datasets as tfds
  from ohc_jax.data import readers
  image_size = int(image_size)
  parts, keys = splits.split('+'), (image_key, label_key) if label_key else (image_key,)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
      builder.download_and_prepare()
    missing = [p for p in parts if p.split('[')[0] not in builder.info.splits]
    if missing and builder.info.splits:  # None at all: not prepared, as_dataset says so.
      raise UsageError(f'tfds {name} has no split {missing[0]!r} (it has '
                       f'{", ".join(builder.info.splits)}): set '
                       f'--config.train_split= and --config.eval_split= to its splits')
    datasets = [builder.as_dataset(split=part, shuffle_files=False) for part in parts]
    sizes = [int(ds.cardinality()) if ds.cardinality() >= 0 else  # Known for tfds's splits
             int(builder.info.splits[part].num_examples)  # (and under mock_data).
             for ds, part in zip(datasets, parts)]
  except UsageError:
    raise
  except tfds.core.registered.DatasetNotFoundError:
    raise UsageError(f'tfds has no data set {name!r}: use a name of the tfds catalog '
                     f'(https://www.tensorflow.org/datasets/catalog)') from None
  except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as e:
    raise UsageError(f'data set {name!r} is not prepared under {data_dir}: {fix} '
                     f'({type(e).__name__})') from None
  except Exception as e:  # pylint: disable=broad-except  (tfds raises many kinds)
    raise UsageError(f'cannot load {name}:{splits} from tfds ({first_line(e)}): {fix}') from None
  features = builder.info.features
  for key, field in zip(keys, ('image_key', 'label_key')):
    if key not in features:
      raise UsageError(f'tfds {name} has no feature {key!r} (it has {", ".join(features)}): set '
                       f'--config.{field}= to one of them')
  image = features[image_key]
  if readers.image_encoding(image) is None:
    raise UsageError(f'tfds {name}\'s feature {image_key!r} is a {type(image).__name__}, not an '
                     f'Image: set --config.image_key= to an image feature')
  if None in image.shape[:2] and not image_size:
    raise UsageError(f'tfds {name}\'s images vary in size ({image.shape}): set '
                     f'--config.image_size=N to resize them to N x N')
  label = features[label_key] if label_key else None
  if label_key and not isinstance(label, tfds.features.ClassLabel):
    raise UsageError(f'tfds {name}\'s feature {label_key!r} is a {type(label).__name__}, not a '
                     f'ClassLabel: set --config.label_key= to a class label feature')
  info = {'sizes': sizes, 'num_classes': int(getattr(label, 'num_classes', 0) or 0),
          'names': list(getattr(label, 'names', None) or [])}
  count = sum(sizes)
  if not count:
    raise UsageError(f'{name}:{splits} holds no examples: {fix}')
  if cache:
    target = os.path.join(cache_root(), _key(name, splits, image_key, label_key or None, image_size,
                                             data_dir))
    tmp = f'{target}.tmp{os.getpid()}'
    os.makedirs(tmp, exist_ok=True)
  images, labels, row = None, np.empty(count, np.int64) if label_key else None, 0
  ds = datasets[0]
  for more in datasets[1:]:
    ds = ds.concatenate(more)
  pick = lambda e: {k: _resize(e[k], image_size) if k == image_key and image_size else e[k]
                    for k in keys}  # Image by image, in tf.data: memory holds a batch.
  for batch in tfds.as_numpy(ds.map(pick, tf.data.AUTOTUNE).batch(4096)):  # In order.
    x = batch[image_key]
    if images is None:  # Filled in place: the data is never held twice.
      shape = (count,) + x.shape[1:]
      images = (np.lib.format.open_memmap(os.path.join(tmp, 'images.npy'), 'w+', x.dtype, shape)
                if cache else np.empty(shape, x.dtype))
    images[row:row + len(x)] = x
    if label_key:
      labels[row:row + len(x)] = batch[label_key]
    row += len(x)
  if row != count:
    raise UsageError(f'tfds {name}:{splits} read {row} examples, its info says {count}: prepare '
                     f'it again')
  if not cache:
    return images, labels, info
  images.flush()
  del images
  if label_key:
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
    print(_decode(*sys.argv[1:6], sys.argv[6] == '1', *sys.argv[7:9], cache=True))
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
