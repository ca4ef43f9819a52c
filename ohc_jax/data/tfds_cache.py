"""tfds data sets decoded once and cached as .npy files (cache.py), which later runs memory-map.

A data set is decoded in a child process (`python -m ohc_jax.data.tfds_cache`, with a progress
bar), so TensorFlow never enters the training process: it would add about 0.6 GB to its memory and
seconds to its start. Either on-disk format is read: TFRecord (what tfds prepares by default)
through tf.data, ArrayRecord through `tfds.data_source`. RealDisp is built from its logs there too
(realdisp.py) and cached as its rows and windows. An entry is keyed by the data set, splits,
feature keys and image size and by the prepared files (names, sizes, times) and tfds's version:
re-preparing a data set or upgrading tfds decodes it again. A damaged prepared set (a shard
deleted or truncated) is one error line naming the shard, and leaves nothing in the cache.
"""

import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

import ohc_jax.data.cache as cache
import ohc_jax.data.images as image_lib
from ohc_jax.errors import UsageError, first_line

_FORMAT = 4  # Bumped when the cached files change form or content (4: complete.json, realdisp).
_MODULE = 'ohc_jax.data.tfds_cache'


def _data_dir(data_dir: Optional[str]) -> str:
  data_dir = data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  return data_dir if '://' in data_dir else os.path.abspath(os.path.expanduser(data_dir))


def _root(name: str, data_dir: str) -> str:
  """Where tfds keeps the prepared files of `name` ('NAME', 'NAME/CONFIG', either ':VERSION')."""
  base, _, version = name.partition(':')
  versioned = os.path.join(data_dir, base, version)
  return versioned if version and os.path.isdir(versioned) else os.path.join(data_dir, base)


def _entry(args: dict) -> Optional[str]:
  """The cache entry of a read, or None when the data set has no prepared files to key it by."""
  files = cache.files_of(_root(args['name'], args['data_dir']))
  if not files:
    return None
  from importlib import metadata
  described = {k: v for k, v in args.items() if k not in ('fix', 'download', 'manual_dir')}
  return os.path.join(cache.root('tfds'), cache.key(
      f'{args["name"]}_{args.get("splits", "")}', _FORMAT, described, files,
      metadata.version('tensorflow-datasets')))


def _cached(args: dict) -> str:
  """The path of the read's whole cache entry, made in the child process if need be."""
  entry = _entry(args)
  if entry and cache.usable(entry):
    return entry
  return cache.make(_MODULE, json.dumps(args))


def _open(path: str):
  images = np.load(os.path.join(path, 'images.npy'), mmap_mode='r')
  labels_path = os.path.join(path, 'labels.npy')
  labels = np.load(labels_path) if os.path.exists(labels_path) else None
  with open(os.path.join(path, 'info.json')) as f:
    info = json.load(f)
  return images, labels, info


def _in_process(data_dir: str) -> bool:
  """A process that has imported tfds already (e.g. under tfds.testing.mock_data) decodes itself,
  into memory, uncached, as does one reading a remote data dir (gs://...: no files to key)."""
  return 'tensorflow_datasets' in sys.modules or '://' in data_dir


def load(name: str, splits: Sequence[str], data_dir: Optional[str], fix: str,
         label_key: Optional[str] = None, download: bool = False, image_key: str = 'image',
         image_size: int = 0):
  """(images (memory-mapped, read-only), labels (int64) or None, info {'sizes', 'num_classes',
  'names'}) of the splits of a tfds data set, one after the other (tfds's own 'a+b' would
  interleave them); decoded in a child process if not cached. image_size N > 0 resizes each image
  there (images.resize_crop), so a set of large or variable-size images never enters memory at
  full size. `fix` ends the error when the data is not there."""
  args = {'kind': 'images', 'name': name, 'splits': '+'.join(splits),
          'data_dir': _data_dir(data_dir), 'fix': fix, 'label_key': label_key or '',
          'download': bool(download), 'image_key': image_key, 'image_size': int(image_size)}
  if _in_process(args['data_dir']):
    return _decode(args, cached=False)
  return _open(_cached(args))


def load_realdisp(data_dir: Optional[str], manual_dir: Optional[str]):
  """(rows (T, 117) memory-mapped, window start rows, window classes, class names, window length)
  of RealDisp, built from manual_dir's logs first if data_dir does not hold it (realdisp.py), in
  the child process like any tfds set."""
  args = {'kind': 'realdisp', 'name': 'realdisp', 'data_dir': _data_dir(data_dir),
          'manual_dir': os.path.abspath(manual_dir) if manual_dir else ''}
  if _in_process(args['data_dir']):
    return _realdisp(args, cached=False)
  path = _cached(args)
  with open(os.path.join(path, 'info.json')) as f:
    info = json.load(f)
  return (np.load(os.path.join(path, 'sequence.npy'), mmap_mode='r'),
          np.load(os.path.join(path, 'starts.npy')), np.load(os.path.join(path, 'labels.npy')),
          tuple(info['names']), info['window'])


def _realdisp(args: dict, cached: bool):
  """Builds RealDisp if need be and reads it: into its cache entry (returns the entry's path), or
  into memory (returns load_realdisp's tuple)."""
  import ohc_jax.data.realdisp as realdisp
  builder = realdisp.prepared(args['data_dir'], args['manual_dir'] or None)
  if not cached:
    return (*realdisp.read(builder), realdisp.WINDOW)
  target = _entry(args)
  if not cache.usable(target):
    with cache.entry(target) as out:
      sequence, starts, labels, names = realdisp.read(builder)
      for file, array in (('sequence', sequence), ('starts', starts), ('labels', labels)):
        np.save(os.path.join(out, f'{file}.npy'), array)
      with open(os.path.join(out, 'info.json'), 'w') as f:
        json.dump({'names': list(names), 'window': realdisp.WINDOW}, f)
  return target


def bad_shard(directory: str) -> Optional[tuple[str, str]]:
  """(path, what is wrong) of the first shard of the prepared set in `directory` (NAME/VERSION)
  that is missing or does not read to the length its dataset_info.json records, or None."""
  import tensorflow as tf
  from array_record.python import array_record_module
  with open(os.path.join(directory, 'dataset_info.json')) as f:
    info = json.load(f)
  file_format = info.get('fileFormat') or 'tfrecord'
  for split in info.get('splits', []):
    lengths = [int(n) for n in split.get('shardLengths', [])]
    for index, length in enumerate(lengths):
      path = os.path.join(directory, f"{info['name']}-{split['name']}.{file_format}-"
                                     f"{index:05d}-of-{len(lengths):05d}")
      if not os.path.isfile(path):
        return path, 'missing'
      try:
        count = (array_record_module.ArrayRecordReader(path).num_records()
                 if file_format == 'array_record' else
                 sum(1 for _ in tf.data.TFRecordDataset(path)))
      except Exception as e:  # pylint: disable=broad-except  (tf and array_record raise many kinds)
        return path, f'unreadable: {type(e).__name__}'
      if count != length:
        return path, f'{count} of its {length} records'
  return None


def damaged(name: str, directory: str, error: Exception) -> UsageError:
  """The error for a prepared set that does not read: its first bad shard (bad_shard; else the
  error) and how to prepare the set again."""
  try:
    found = bad_shard(directory)
  except (OSError, ValueError, KeyError):
    found = None
  what = (f'the shard {found[0]} is damaged ({found[1]})' if found else
          f'{directory} is damaged ({type(error).__name__}: {first_line(error)[:160]})')
  return UsageError(f'tfds {name}: {what}: delete {directory} and prepare '
                    f'{name.split(":")[0]} again (`tfds build`, or --config.download=True)')


def _resize(image, size: int):
  """images.resize_crop in tf.data (one resize for memory and stream mode)."""
  import tensorflow as tf
  resized = tf.numpy_function(lambda x: image_lib.resize_crop(x, size), [image], tf.uint8,
                              stateful=False)
  return tf.ensure_shape(resized, (size, size, image.shape[-1]))


def _tfrecord_batches(datasets, keys, image_key, image_size):
  """{key: array} batches of the parts' tf.data datasets, in order (TFRecord sets)."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  ds = datasets[0]
  for more in datasets[1:]:
    ds = ds.concatenate(more)
  pick = lambda e: {k: _resize(e[k], image_size) if k == image_key and image_size else e[k]
                    for k in keys}  # Image by image, in tf.data: memory holds a batch.
  yield from tfds.as_numpy(ds.map(pick, tf.data.AUTOTUNE).batch(4096))  # In order.


def _array_record_batches(sources, keys, image_key, image_size, batch: int = 1024):
  """{key: array} batches of the parts' data sources, in order (ArrayRecord sets: tfds decodes
  the records in NumPy, without tf.data)."""
  for source in sources:
    for start in range(0, len(source), batch):
      records = source.__getitems__(list(range(start, min(start + batch, len(source)))))
      yield {k: np.stack([image_lib.resize_crop(r[k], image_size)
                          if k == image_key and image_size else r[k] for r in records])
             for k in keys}


def _decode(args: dict, cached: bool):
  """Decodes the splits: into the cache (returns the entry's path) or into memory (returns
  load's triple)."""
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  import tensorflow_datasets as tfds
  name, splits, data_dir, fix = args['name'], args['splits'], args['data_dir'], args['fix']
  image_key, label_key, image_size = args['image_key'], args['label_key'], args['image_size']
  parts, keys = splits.split('+'), (image_key, label_key) if label_key else (image_key,)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    if args['download']:
      builder.download_and_prepare()
    missing = [p for p in parts if p.split('[')[0] not in builder.info.splits]
    if missing and builder.info.splits:  # None at all: not prepared, as_dataset says so.
      raise UsageError(f'tfds {name} has no split {missing[0]!r} (it has '
                       f'{", ".join(builder.info.splits)}): set '
                       f'--config.train_split= and --config.eval_split= to its splits')
    array_record = builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    if array_record:  # Its features as its files say (a registered builder has its own).
      builder = tfds.builder_from_directory(builder.data_dir)
      sources = [builder.as_data_source(split=part) for part in parts]
      sizes = [len(s) for s in sources]
    else:
      sources = [builder.as_dataset(split=part, shuffle_files=False) for part in parts]
      sizes = [int(ds.cardinality()) if ds.cardinality() >= 0 else  # Known for tfds's splits
               int(builder.info.splits[part].num_examples)  # (and under mock_data).
               for ds, part in zip(sources, parts)]
  except UsageError:
    raise
  except tfds.core.registered.DatasetNotFoundError:
    raise UsageError(f'tfds has no data set {name!r}: use a name of the tfds catalog '
                     f'(https://www.tensorflow.org/datasets/catalog)') from None
  except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as e:
    if builder.info.splits and os.path.isdir(_root(name, data_dir)):  # Prepared, a file gone.
      raise damaged(name, builder.data_dir, e) from None
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
  if image_lib.image_encoding(image) is None:
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
  batches = (_array_record_batches(sources, keys, image_key, image_size) if array_record else
             _tfrecord_batches(sources, keys, image_key, image_size))

  def fill(out: Optional[str]):
    """Reads every batch into images (in `out`'s images.npy, else memory) and labels."""
    images, labels, row = None, np.empty(count, np.int64) if label_key else None, 0
    try:
      for batch in batches:
        x = batch[image_key]
        if images is None:  # Filled in place: the data is never held twice.
          shape = (count,) + x.shape[1:]
          images = (np.lib.format.open_memmap(os.path.join(out, 'images.npy'), 'w+', x.dtype,
                                              shape) if out else np.empty(shape, x.dtype))
        images[row:row + len(x)] = x
        if label_key:
          labels[row:row + len(x)] = batch[label_key]
        row += len(x)
        if out:
          cache.progress(f'decoding {name}:{splits}', row, count)
    except Exception as e:  # pylint: disable=broad-except  (a bad shard: tf or array_record)
      raise damaged(name, builder.data_dir, e) from None
    if row != count:
      raise UsageError(f'tfds {name}:{splits} read {row} examples, its info says {count}: '
                       f'prepare it again')
    return images, labels

  if not cached:
    return (*fill(None), info)
  target = _entry(args)
  if not cache.usable(target):
    with cache.entry(target) as out:
      images, labels = fill(out)
      images.flush()
      del images
      if label_key:
        np.save(os.path.join(out, 'labels.npy'), labels)
      with open(os.path.join(out, 'info.json'), 'w') as f:
        json.dump(info, f)
  return target


if __name__ == '__main__':
  try:
    request = json.loads(sys.argv[1])
    print((_realdisp if request['kind'] == 'realdisp' else _decode)(request, cached=True))
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
