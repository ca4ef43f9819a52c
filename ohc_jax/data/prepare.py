"""ArrayRecord copies of tfds sets prepared as TFRecord, so that stream mode reads either format.

Stream mode reads records by index, which ArrayRecord allows and TFRecord (a file read front to
back) does not. A set prepared as TFRecord (tfds's default, as the shared CIFAR-10) is copied once,
record for record, into the cache ($OHC_JAX_CACHE/array_record, cache.py: keyed by the prepared
files, rebuilt when damaged), in a child process with a progress bar, since reading TFRecord takes
TensorFlow, which never enters a training process. `launch/to_array_record.py` runs the same copy
ahead of time. A copy is a tfds data set: tfds.data_source reads it.

The cache's copy stores fixed-size uint8 images raw (`raw_images`: a tfds Tensor of the decoded
bytes, as memory mode's decode cache holds them), since reading then skips the PNG decoding:
CIFAR-10, 256 random records, 4.5 ms of CPU per batch read raw against 18.6 ms as PNG (one
thread, tfds's data source; 3.4 ms with sources.ImageSource's reader; 2026-12-05), for 1.3x the
disk (183 against 139 MB). An image that does not decode is
stored empty, so it stays a record that does not decode (skip_bad_records). Images of varying size
are copied as stored.
"""

import glob
import json
import os
import shutil
import sys
from typing import Optional

import numpy as np

import ohc_jax.data.array_record as array_record
import ohc_jax.data.cache as cache
from ohc_jax.errors import UsageError

_MODULE = 'ohc_jax.data.prepare'
_FORMAT = 2  # Bumped when the copies change form (2: fixed-size images stored raw).


def _version(name: str) -> tuple:
  return tuple(int(p) for p in name.split('.') if p.isdigit())


def prepared_dir(name: str, data_dir: Optional[str]) -> Optional[str]:
  """The NAME[/CONFIG]/VERSION folder of a prepared tfds set, either format (the highest version,
  or NAME's ':VERSION'), or None: an absolute path, so that the cache's copy of a set is one
  however its data dir is written."""
  base, _, version = name.partition(':')
  root = os.path.join(os.path.abspath(os.path.expanduser(
      data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')), base)
  found = [d for d in (os.listdir(root) if os.path.isdir(root) else ())
           if (not version or d == version) and
           os.path.isfile(os.path.join(root, d, 'dataset_info.json'))]
  return os.path.join(root, max(found, key=_version)) if found else None


def file_format(directory: str) -> str:
  """'array_record' or 'tfrecord' (tfds's default), as the set's dataset_info.json says."""
  with open(os.path.join(directory, 'dataset_info.json')) as f:
    return json.load(f).get('fileFormat') or 'tfrecord'


def array_record_copy(directory: str) -> str:
  """The ArrayRecord copy of the TFRecord set in `directory` (NAME/VERSION), made in the cache by
  a child process if it is not there: its NAME/VERSION folder."""
  name, version = os.path.basename(os.path.dirname(directory)), os.path.basename(directory)
  entry = os.path.join(cache.root('array_record'),
                       cache.key(f'{name}_{version}', _FORMAT, directory,
                                 cache.files_of(directory)))
  if not cache.usable(entry):
    entry = cache.make(_MODULE, directory, entry)
  return os.path.join(entry, name, version)


def raw_images(src: str):
  """(record -> record with each fixed-size uint8 image of the set in `src` stored as its raw
  bytes, the set's features so stored), or None if it has no such image."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.proto import tf_example_pb2
  features = tfds.builder_from_directory(src).info.features
  fixed = {key: feature for key, feature in features.items()
           if isinstance(feature, tfds.features.Image) and None not in feature.shape and
           feature.np_dtype == np.uint8}
  if not fixed:
    return None

  def change(record: bytes) -> bytes:
    try:
      example = tf_example_pb2.Example.FromString(record)
    except Exception:  # pylint: disable=broad-except  (protobuf's DecodeError: copied as it is,
      return record    # it stays a record that does not decode)
    for key, image in fixed.items():
      stored = example.features.feature[key].bytes_list.value
      try:
        decoded = image.decode_example_np(stored[0])
      except Exception:  # pylint: disable=broad-except  (OpenCV's errors, a missing value)
        decoded = None
      ok = decoded is not None and decoded.shape == tuple(image.shape)
      stored[:] = [np.ascontiguousarray(decoded).tobytes() if ok else b'']
    return example.SerializeToString()

  return change, tfds.features.FeaturesDict({
      key: tfds.features.Tensor(shape=fixed[key].shape, dtype=np.uint8,
                                encoding=tfds.features.Encoding.BYTES) if key in fixed else feature
      for key, feature in features.items()})


def convert(src: str, out: str, raw: bool = True, progress: bool = False) -> None:
  """Writes the ArrayRecord copy of the TFRecord set `src` (NAME/VERSION) to `out`: every shard's
  records, with fixed-size images stored raw if `raw` (raw_images), into a shard of the same name
  (array_record.WRITER_OPTIONS); dataset_info.json then says array_record. A shard that does not
  read is one UsageError naming it."""
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  from array_record.python import array_record_module
  import ohc_jax.data.tfds_cache as tfds_cache
  change, features = (raw and raw_images(src)) or ((lambda r: r), None)
  with open(os.path.join(src, 'dataset_info.json')) as f:
    info = json.load(f)
  os.makedirs(out, exist_ok=True)
  total, done = sum(int(n) for s in info['splits'] for n in s.get('shardLengths', [])), 0
  for split in info['splits']:
    stem = f"{info['name']}-{split['name']}.tfrecord-"
    expected = len(split.get('shardLengths', [])) or None
    paths = sorted(glob.glob(os.path.join(src, stem + '*')))
    if expected and len(paths) != expected:
      missing = next(f'{stem}{i:05d}-of-{expected:05d}' for i in range(expected)
                     if not os.path.exists(os.path.join(src, f'{stem}{i:05d}-of-{expected:05d}')))
      raise tfds_cache.damaged(info['name'], src,
                               FileNotFoundError(f'{os.path.join(src, missing)} not found'))
    for index, path in enumerate(paths):
      target = os.path.join(out, os.path.basename(path).replace('.tfrecord-', '.array_record-'))
      writer, count = array_record_module.ArrayRecordWriter(target,
                                                             array_record.WRITER_OPTIONS), 0
      try:
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
          writer.write(change(record))
          count, done = count + 1, done + 1
          if progress and (done % 2000 == 0 or done == total):
            cache.progress(f'copying {info["name"]} to ArrayRecord', done, total)
      except tf.errors.OpError as e:
        raise tfds_cache.damaged(info['name'], src, e) from None
      finally:
        writer.close()
      if expected and count != int(split['shardLengths'][index]):  # Cut at a record's end.
        raise tfds_cache.damaged(info['name'], src, EOFError(f'{path}: {count} records'))
  info['fileFormat'] = 'array_record'
  for name in os.listdir(src):  # features.json, label names.
    if not name.startswith(info['name'] + '-') and name != 'dataset_info.json':
      shutil.copy(os.path.join(src, name), out)
  with open(os.path.join(out, 'dataset_info.json'), 'w') as f:
    json.dump(info, f, indent=2)
  if features is not None:
    features.save_config(out)


if __name__ == '__main__':
  source, target = sys.argv[1:3]
  try:
    if not cache.usable(target):
      with cache.entry(target) as tmp:
        convert(source, os.path.join(tmp, os.path.basename(os.path.dirname(source)),
                                     os.path.basename(source)), progress=True)
    print(target)
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
