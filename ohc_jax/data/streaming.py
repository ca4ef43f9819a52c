"""Streaming input: batches read by index from ArrayRecord files, or rows of a memory-mapped .npy
file (`ArraySource`), so no split is held in memory.

Design (issue 14). tfds's ArrayRecord data source gives random access by record index; over it our
own sampler takes each epoch in the order memory mode uses (`input_pipeline.epoch_permutation`,
a function of (seed, epoch)), so `StreamFeed` gives the very batches `TrainFeed` gives, and a
thread pool reads and decodes whole batches ahead. Each process reads only its rows of each global
batch; resuming at step s slices the permutation (no record is read and dropped); host memory holds
the permutation (8 bytes a point; a vectors file's labels 8 more) and `prefetch` batches. Records
are parsed by our own tf.train.Example class (`example_class`: TensorFlow, ~0.5 GB, stays out of
the process) and decoded by OpenCV (PNG, JPEG: 1.5-2x tfds's generic decoding), or, stored raw
(launch/to_array_record.py --encoding=raw), not decoded at all; `image_size` resizes on the same
threads (readers.resize_crop, as memory mode does). With `skip_bad`, a record that does not decode
is replaced by the next one that does and marked in the batch's 'skipped'.

Rejected: tf.data over TFRecord shards (resuming at step s reads and drops s batches, or needs
per-shard offsets; its shuffle is a window, not a permutation); grain 0.2.18 (installs under our
pins; its MapDataset and IndexSampler give what `StreamFeed` does in 40 lines, with its own order).

Measured (docs/benchmarks.md, --suite=input, 2 shared CPU cores): the train step fed from a stream
at 75-92% of memory mode's images/s, peak RSS 932-981 MB against memory mode's 1,140 MB, the same
for CIFAR-10 and a 1.2M-image set; resuming anywhere in an epoch in hundredths of a second.
"""

import collections
import concurrent.futures
import functools
import json
import os
from typing import Callable, Iterable, Iterator

import numpy as np

from ohc_jax.data import readers
from ohc_jax.errors import UsageError
from ohc_jax.data.input_pipeline import epoch_permutation, eval_rows, pad_rows

_TEMPLATE = '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'


@functools.cache
def example_class():
  """tf.train.Example's message class, built from its two .proto files' fields (tensorflow/core/
  example/{feature,example}.proto) in a pool of its own: parsing records this way keeps
  TensorFlow, ~0.5 GB, out of a streaming process."""
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
  field = descriptor_pb2.FieldDescriptorProto
  proto = descriptor_pb2.FileDescriptorProto(name='ohc_jax/example.proto', package='tensorflow',
                                             syntax='proto3')

  def message(name, *fields, parent=proto):
    made = (parent.message_type if parent is proto else parent.nested_type).add(name=name)
    for number, (field_name, kind, label, type_name) in enumerate(fields, 1):
      made.field.add(name=field_name, number=number, type=kind, label=label,
                     type_name=type_name, json_name=field_name)
    return made

  repeated, optional = field.LABEL_REPEATED, field.LABEL_OPTIONAL
  message('BytesList', ('value', field.TYPE_BYTES, repeated, None))
  message('FloatList', ('value', field.TYPE_FLOAT, repeated, None))
  message('Int64List', ('value', field.TYPE_INT64, repeated, None))
  feature = message('Feature', *((name, field.TYPE_MESSAGE, optional, f'.tensorflow.{kind}')
                                 for name, kind in (('bytes_list', 'BytesList'),
                                                    ('float_list', 'FloatList'),
                                                    ('int64_list', 'Int64List'))))
  feature.oneof_decl.add(name='kind')
  for f in feature.field:
    f.oneof_index = 0
  features = message('Features', ('feature', field.TYPE_MESSAGE, repeated,
                                  '.tensorflow.Features.FeatureEntry'))
  entry = message('FeatureEntry', ('key', field.TYPE_STRING, optional, None),
                  ('value', field.TYPE_MESSAGE, optional, '.tensorflow.Feature'), parent=features)
  entry.options.map_entry = True
  message('Example', ('features', field.TYPE_MESSAGE, optional, '.tensorflow.Features'))
  pool = descriptor_pool.DescriptorPool()
  pool.Add(proto)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName('tensorflow.Example'))


class ImageSource:
  """A split of a tfds data set stored as ArrayRecord (a data dir's NAME/VERSION folder): its
  length and decoded batches by index. Images are decoded (PNG, JPEG) or, stored raw, read as
  they are; image_size N > 0 resizes each to N x N (readers.resize_crop, as memory mode does)."""

  def __init__(self, dataset_dir: str, split: str, image_key: str = 'image',
               label_key: str = 'label', image_size: int = 0, skip_bad: bool = False):
    import tensorflow_datasets as tfds
    builder = tfds.builder_from_directory(dataset_dir)
    self._where = f'{dataset_dir} ({split})'
    features = builder.info.features
    for key, field in ((image_key, 'image_key'), (label_key, 'label_key')):
      if key not in features:
        raise UsageError(f'{self._where} has no feature {key!r} (it has {", ".join(features)}): '
                         f'set --config.{field}= to one of them')
    self._encoding = readers.image_encoding(features[image_key])
    if self._encoding is None:
      raise UsageError(f'{self._where}: the feature {image_key!r} is a '
                       f'{type(features[image_key]).__name__}, not an image: set '
                       f'--config.image_key= to an image feature')
    self._stored = tuple(features[image_key].shape)
    if None in self._stored[:2] and not image_size:
      raise UsageError(f'{self._where}: the images vary in size ({self._stored}): set '
                       f'--config.image_size=N to resize them to N x N')
    self._records = builder.as_data_source(
        split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    self._parse = example_class().FromString
    self._decode = self.decoder(self._stored)
    self._keys, self._size, self._skip_bad = (image_key, label_key), image_size, skip_bad
    self.image_shape = (image_size, image_size, self._stored[-1]) if image_size else self._stored
    self.num_classes = features[label_key].num_classes
    self.names = tuple(features[label_key].names)
    self.shape, self.dtype = (len(self),) + self.image_shape, np.dtype(np.uint8)

  def __len__(self):
    return len(self._records)

  @property
  def marks_skipped(self) -> bool:
    """Whether batches carry 'skipped' (skip_bad)."""
    return self._skip_bad

  @staticmethod
  def decoder(shape: tuple) -> Callable[[bytes], np.ndarray | None]:
    """PNG or JPEG bytes -> a (H, W, C) uint8 image of `shape`'s channels, as tfds decodes them
    (OpenCV: 1.5-2x tfds's decoding), or None when they do not decode."""
    import cv2
    grey = shape[-1] == 1
    flag = cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR

    def decode(data: bytes):
      image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
      if image is None:
        return None
      return image[..., None] if grey else np.ascontiguousarray(image[..., ::-1])  # From BGR.
    return decode

  def _image(self, data: bytes) -> np.ndarray | None:
    """A record's image as image_shape, or None when it does not decode to one."""
    if self._encoding == 'raw':
      image = np.frombuffer(data, np.uint8)
      image = image.reshape(self._stored) if image.size == np.prod(self._stored) else None
    else:
      image = self._decode(data)
    if image is not None and self._size:
      image = readers.resize_crop(image, self._size)
    return image if image is not None and image.shape == self.image_shape else None

  def _records_of(self, rows) -> list:
    try:
      return self._records.__getitems__(list(rows))
    except Exception as e:  # pylint: disable=broad-except  (array_record raises many kinds)
      raise UsageError(f'{self._where}: cannot read records {min(rows)}-{max(rows)} '
                       f'({type(e).__name__}): the files are truncated or damaged; prepare the '
                       f'data set again') from None

  def _example(self, record: bytes):
    """(image or None, label) of a serialized example."""
    image_key, label_key = self._keys
    try:
      feature = self._parse(record).features.feature
      return (self._image(feature[image_key].bytes_list.value[0]),
              feature[label_key].int64_list.value[0])
    except Exception:  # pylint: disable=broad-except  (protobuf's and OpenCV's errors, a missing key)
      return None, None

  def _substitute(self, row: int):
    """(image, label) of the first record after `row` (cyclically) that decodes."""
    for step in range(1, len(self)):
      image, label = self._example(self._records_of([(row + step) % len(self)])[0])
      if image is not None:
        return image, label
    raise UsageError(f'{self._where}: no record decodes: prepare the data set again')

  def read(self, rows: np.ndarray) -> dict:
    """{'image': (B, H, W, C) uint8, 'label': (B,) int64} of the rows, in their order; with
    skip_bad also 'skipped', marking the rows that did not decode (the next record that decodes
    took their place)."""
    images = np.empty((len(rows),) + self.image_shape, np.uint8)
    labels = np.empty(len(rows), np.int64)
    skipped = np.zeros(len(rows), bool)
    for i, record in enumerate(self._records_of(rows.tolist())):
      image, label = self._example(record)
      if image is None:
        if not self._skip_bad:
          raise UsageError(f'{self._where}: record {rows[i]} does not decode to a '
                           f'{self.image_shape} image: prepare the data set again, remove it, or '
                           f'set --config.skip_bad_records=True to skip and count such records')
        image, label = self._substitute(int(rows[i]))
        skipped[i] = True
      images[i], labels[i] = image, label
    return {'image': images, 'label': labels, **({'skipped': skipped} if self._skip_bad else {})}


class ConcatSource:
  """Sources one after the other (protocol 'paper': train, then test)."""

  def __init__(self, *sources):
    self._sources = sources
    self._starts = np.cumsum([0] + [len(s) for s in sources])
    self.shape = (int(self._starts[-1]),) + sources[0].shape[1:]
    self.dtype = sources[0].dtype

  def __len__(self):
    return int(self._starts[-1])

  @property
  def marks_skipped(self) -> bool:
    return any(getattr(s, 'marks_skipped', False) for s in self._sources)

  def read(self, rows: np.ndarray) -> dict:
    part = np.searchsorted(self._starts, rows, side='right') - 1
    out = {}
    for p in np.unique(part):
      at = part == p
      for key, value in self._sources[p].read(rows[at] - self._starts[p]).items():
        out.setdefault(key, np.empty((len(rows),) + value.shape[1:], value.dtype))[at] = value
    return out


class ArraySource:
  """Arrays as a source, their rows read as `dtype` (default: as stored): in memory, or memory-
  mapped (input_pipeline's vectors:FILE.npy in stream mode), where the pages of the rows read are
  all that come into memory."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, dtype=None):
    self.images, self.labels = images, labels
    self.shape, self.dtype = images.shape, np.dtype(dtype or images.dtype)

  def __len__(self):
    return len(self.labels)

  def read(self, rows: np.ndarray) -> dict:
    """{'image', 'label' int64} of the rows, in their order, read in ascending order (a mapped
    file's pages in sequence)."""
    order = np.argsort(rows)
    images = np.empty((len(rows),) + self.shape[1:], self.dtype)
    images[order] = self.images[rows[order]]
    return {'image': images, 'label': np.asarray(self.labels[rows], np.int64)}


def default_threads() -> int:
  """Half the host's cores, at least one: the rest stay with the train step (on 2 CPU cores,
  CIFAR-10 from raw records trained at 91-92% of memory mode's images/s with one thread, 82-90%
  with two: docs/benchmarks.md)."""
  return max(1, (os.cpu_count() or 2) // 2)


def _read_ahead(read: Callable[[np.ndarray], dict], row_batches: Iterable[np.ndarray],
                threads: int, prefetch: int) -> Iterator[dict]:
  """read(rows) for each batch of rows, in order, with up to `prefetch` batches in flight."""
  pool = concurrent.futures.ThreadPoolExecutor(threads)
  pending = collections.deque()
  try:
    for rows in row_batches:
      pending.append(pool.submit(read, rows))
      if len(pending) > prefetch:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  finally:  # Also when the consumer stops early: drop what is queued.
    pool.shutdown(wait=True, cancel_futures=True)


class StreamFeed:
  """TrainFeed's interface over a source read by index: this process's rows of each global batch
  of the epoch's permutation, read and decoded on `threads` host threads."""

  def __init__(self, source, global_batch: int, seed: int, process_index: int = 0,
               process_count: int = 1, threads: int = 2, prefetch: int = 4):
    self._source, self._seed, self._global_batch = source, seed, global_batch
    self._local_batch = global_batch // process_count
    self._offset = process_index * self._local_batch
    self._threads, self._prefetch = threads, prefetch
    self.steps_per_epoch = len(source) // global_batch

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
    """Batches {'image', 'label'} of the epoch from start_step on (drop remainder)."""
    perm = epoch_permutation(len(self._source), self._seed, epoch)
    perm = perm[:self.steps_per_epoch * self._global_batch].reshape(self.steps_per_epoch, -1)
    rows = perm[start_step:, self._offset:self._offset + self._local_batch]
    return _read_ahead(self._source.read, rows, self._threads, self._prefetch)


def eval_batches(source, global_batch: int, process_index: int = 0, process_count: int = 1,
                 threads: int = 2, prefetch: int = 4) -> Iterator[tuple[dict, int]]:
  """input_pipeline.eval_batches over a source, with the labels: yields (this process's rows of
  each global batch in order, padded, {'image', 'label', 'valid'}; real points in the batch)."""
  local = global_batch // process_count
  batches = list(eval_rows(len(source), global_batch, process_index, process_count))
  rows = (np.arange(r.start, max(r.start, r.stop)) for r, _ in batches)
  for (_, valid), batch in zip(batches, _read_ahead(source.read, rows, threads, prefetch)):
    images, real = pad_rows(batch.pop('image'), local)
    yield {'image': images, **{k: pad_rows(v, local)[0] for k, v in batch.items()},
           'valid': real}, valid


def shard_path(dataset_dir: str, name: str, split: str, index: int, count: int) -> str:
  """Where tfds looks for shard `index` of `count` of a split in ArrayRecord."""
  return os.path.join(dataset_dir, _TEMPLATE.format(
      DATASET=name, SPLIT=split, FILEFORMAT='array_record',
      SHARD_X_OF_Y=f'{index:05d}-of-{count:05d}'))


def write_records(path: str, records: Iterable[bytes]) -> None:
  """One ArrayRecord shard, group size 1 (each record read alone, as random access wants)."""
  from array_record.python import array_record_module
  os.makedirs(os.path.dirname(path), exist_ok=True)
  writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')
  for record in records:
    writer.write(record)
  writer.close()


def write_info(dataset_dir: str, name: str, version: str, splits: dict[str, list[int]],
               features) -> None:
  """The dataset_info.json and features.json that make dataset_dir a tfds data set in
  ArrayRecord: splits maps each split to its shard lengths; features is a tfds FeaturesDict."""
  info = {'name': name, 'version': version, 'fileFormat': 'array_record',
          'splits': [{'name': split, 'filepathTemplate': _TEMPLATE,
                      'shardLengths': [str(n) for n in lengths]}
                     for split, lengths in splits.items()]}
  with open(os.path.join(dataset_dir, 'dataset_info.json'), 'w') as f:
    json.dump(info, f, indent=2)
  features.save_config(dataset_dir)


def image_features(shape: tuple[int, ...], num_classes: int, encoding: str = 'png'):
  """The tfds FeaturesDict of an image set: 'png' an Image (what tfds prepares), 'raw' a uint8
  Tensor of raw bytes (larger on disk, read without decoding: streaming's fastest form)."""
  import tensorflow_datasets as tfds
  image = (tfds.features.Image(shape=shape) if encoding == 'png' else
           tfds.features.Tensor(shape=shape, dtype=np.uint8,
                                encoding=tfds.features.Encoding.BYTES))
  return tfds.features.FeaturesDict({'image': image,
                                     'label': tfds.features.ClassLabel(num_classes=num_classes)})


def encode_examples(images: np.ndarray, labels: np.ndarray,
                    encoding: str = 'png') -> Iterator[bytes]:
  """Serialized tf.train.Examples as tfds stores `image_features` (image: PNG or raw bytes;
  label: int64)."""
  import cv2
  for image, label in zip(images, labels):
    if encoding == 'raw':
      data = np.ascontiguousarray(image, np.uint8).tobytes()
    else:
      ok, png = cv2.imencode('.png', image[..., ::-1] if image.shape[-1] == 3 else image)
      assert ok
      data = png.tobytes()
    example = example_class()()
    example.features.feature['image'].bytes_list.value.append(data)
    example.features.feature['label'].int64_list.value.append(int(label))
    yield example.SerializeToString()
