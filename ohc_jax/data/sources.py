"""The sources the feeds read by index (pipeline.py): a split held in memory (or memory-mapped)
and the streamed ones, all with `len` and `read(rows) -> {'image', 'label'}`.

- `Split`: arrays in memory or memory-mapped (memory mode, and what `load` returns);
- `ArraySource`: arrays read row by row as some dtype (vectors:FILE.npy memory-mapped in stream
  mode, so only the pages of the rows read come into memory);
- `ImageSource`: a split of a tfds set stored as ArrayRecord: its features and files as tfds
  describes them (`builder_from_directory`, the split's file instructions; no TensorFlow), its
  records read by index with array_record's reader, parsed by tfds's own tf.train.Example class
  (`tensorflow_datasets.proto`) and decoded by the image feature's own `decode_example_np`
  (OpenCV), or, stored raw, unpacked a batch at a time;
- `ConcatSource`: sources one after the other (protocol 'paper').

Why records are read raw and decoded here rather than by the data source's decoding: a record
that does not decode must be told apart from files that do not read (the first is skipped under
skip_bad_records, the second is not), and tfds's generic `deserialize_example_np` decodes every
feature of a record: 8.5k CIFAR-10 images/s on one thread here against 14.7k for the message
class and the image feature's decoder alone (2,560 records, 2026-12-05).

Why array_record's reader rather than tfds's data source (`tfds.data_source`, array_record's
ArrayRecordDataSource, which this used before): the data source reads each record through a
32 kB buffer, in the order asked, on a thread pool made anew for each call; a shard's reader with a
4 kB buffer, given a batch's positions sorted, read CIFAR-10's records (3 kB, raw) at 1.95 against
3.3 ms of CPU per batch of 256, and, with raw images unpacked a batch at a time, the whole read
took 3.1 against 5.4 ms (2026-12-05, one thread). Trained from the cache's copy, stream mode went
from 89% and 93% of memory mode's images/s to 95% and 96% (single interleaved runs).
"""

import dataclasses
import os
import threading

import numpy as np

import ohc_jax.data.readers as readers
from ohc_jax.errors import UsageError


class Windows:
  """Fixed-length windows of a long (T, C) sequence as a read-only (N, length, C) array: indexing
  copies just the windows asked for (the windows overlap: all of them would not fit in memory);
  `take(rows)` is a subset that copies nothing."""

  def __init__(self, sequence: np.ndarray, starts: np.ndarray, length: int):
    self.sequence, self.starts, self.length = sequence, np.asarray(starts, np.int64), length
    self.shape = (len(self.starts), length) + sequence.shape[1:]
    self.dtype, self.ndim = sequence.dtype, len(self.shape)

  def __len__(self):
    return len(self.starts)

  def __getitem__(self, index):
    return self.sequence[self.starts[index][..., None] + np.arange(self.length)]

  def take(self, rows) -> 'Windows':
    return Windows(self.sequence, self.starts[rows], self.length)


@dataclasses.dataclass(frozen=True)
class Split:
  """A split held in memory: inputs in their stored dtype and integer class labels."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self):
    return len(self.labels)

  def read(self, rows: np.ndarray) -> dict:
    """{'image', 'label'} of the rows, in their order."""
    return {'image': np.asarray(self.images[rows]), 'label': self.labels[rows]}


def subset(split: Split, rows) -> Split:
  """The rows (indices or a slice) of a split; windows stay windows."""
  images = split.images
  return Split(images.take(rows) if isinstance(images, Windows) else images[rows],
               split.labels[rows])


class ArraySource:
  """Arrays as a source, their rows read as `dtype` (default: as stored): in memory, or memory-
  mapped (vectors:FILE.npy in stream mode), where the pages of the rows read are all that come
  into memory."""

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


class ImageSource:
  """A split of a tfds data set stored as ArrayRecord (a data dir's NAME/VERSION folder): its
  length and decoded batches by index. image_size N > 0 resizes each image to N x N
  (readers.resize_crop, as memory mode does). With `skip_bad`, a record that does not decode is
  replaced by the next one that does and marked in the batch's 'skipped'."""

  def __init__(self, dataset_dir: str, split: str, image_key: str = 'image',
               label_key: str = 'label', image_size: int = 0, skip_bad: bool = False):
    import tensorflow_datasets as tfds
    from tensorflow_datasets.proto import tf_example_pb2
    builder = tfds.builder_from_directory(dataset_dir)
    self._where = f'{dataset_dir} ({split})'
    features = builder.info.features
    for key, field in ((image_key, 'image_key'), (label_key, 'label_key')):
      if key not in features:
        raise UsageError(f'{self._where} has no feature {key!r} (it has {", ".join(features)}): '
                         f'set --config.{field}= to one of them')
    if readers.image_encoding(features[image_key]) is None:
      raise UsageError(f'{self._where}: the feature {image_key!r} is a '
                       f'{type(features[image_key]).__name__}, not an image: set '
                       f'--config.image_key= to an image feature')
    self._stored = tuple(features[image_key].shape)
    if None in self._stored[:2] and not image_size:
      raise UsageError(f'{self._where}: the images vary in size ({self._stored}): set '
                       f'--config.image_size=N to resize them to N x N')
    instructions = builder.info.splits[split].file_instructions
    self._shards = [(i.filename, i.skip, i.take) for i in instructions]
    self._starts = np.cumsum([0] + [i.take for i in instructions])
    self._readers, self._lock = [None] * len(self._shards), threading.Lock()
    # array_record reads a batch's records on a thread pool of its own, made at its first such
    # read; made here, its threads keep this thread's priority rather than that of a feed's
    # reading threads on idle CPU time (pipeline.py), which would leave them, and the batches
    # read at normal priority after a feed starves, waiting for a core on a busy machine.
    self._records_of(range(min(len(self), 2)))
    self._example_class = tf_example_pb2.Example
    self._decode = features[image_key].decode_example_np
    self._unpack = readers.image_encoding(features[image_key]) == 'raw' and not image_size
    self._keys, self._size, self._skip_bad = (image_key, label_key), image_size, skip_bad
    self.image_shape = (image_size, image_size, self._stored[-1]) if image_size else self._stored
    self.num_classes = features[label_key].num_classes
    self.names = tuple(features[label_key].names)
    self.shape, self.dtype = (len(self),) + self.image_shape, np.dtype(np.uint8)

  def __len__(self):
    return int(self._starts[-1])

  def __getstate__(self):
    """Pickled (for Grain's worker processes) without its open readers: each process opens its
    own."""
    state = dict(self.__dict__, _readers=[None] * len(self._shards), _lock=None)
    del state['_example_class']  # Generated by protobuf: pickle cannot find it by name.
    return state

  def __setstate__(self, state):
    from tensorflow_datasets.proto import tf_example_pb2
    self.__dict__.update(state, _lock=threading.Lock(), _example_class=tf_example_pb2.Example)

  @property
  def marks_skipped(self) -> bool:
    """Whether batches carry 'skipped' (skip_bad)."""
    return self._skip_bad

  def _reader(self, shard: int):
    """The shard's reader, opened at its first read and checked to hold the records the split
    takes from it: positions read in one call, through a 4 kB buffer (the records of raw or
    encoded images are a few kB, read one by one)."""
    if self._readers[shard] is None:
      with self._lock:
        if self._readers[shard] is None:
          from array_record.python import array_record_module
          path, skip, take = self._shards[shard]
          reader = array_record_module.ArrayRecordReader(
              path, options='readahead_buffer_size:0', file_reader_buffer_size=4096)
          held = reader.num_records() if reader.ok() else 0
          if held < skip + take:  # A file missing or cut short opens without an error.
            what = (f'holds {held} of its {skip + take} records (truncated or damaged)'
                    if os.path.exists(path) else 'is missing')
            raise UsageError(f'{self._where}: {path} {what}: prepare the data set again')
          self._readers[shard] = reader
    return self._readers[shard]

  def _records_of(self, rows) -> list:
    """The serialized records of the rows, in their order, each shard's read in position order."""
    rows = np.asarray(rows, np.int64)
    shard_of = np.searchsorted(self._starts, rows, side='right') - 1
    order = np.lexsort((rows, shard_of))
    records = [b''] * len(rows)
    try:
      for shard in np.unique(shard_of):
        at = order[shard_of[order] == shard]
        positions = rows[at] - self._starts[shard] + self._shards[shard][1]
        for i, record in zip(at.tolist(), self._reader(shard).read(positions.tolist())):
          records[i] = record
    except UsageError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (array_record raises many kinds)
      raise UsageError(f'{self._where}: cannot read records {rows.min()}-{rows.max()} '
                       f'({type(e).__name__}): the files are truncated or damaged; prepare the '
                       f'data set again') from None
    return records

  def _unpacked(self, records: list):
    """(images, labels) of a batch of raw images unpacked at once, or None where a record does not
    hold one image of image_shape (then each is decoded alone, and the bad ones found)."""
    image_key, label_key = self._keys
    size = int(np.prod(self.image_shape))
    try:
      features = [self._example_class.FromString(r).features.feature for r in records]
      stored = [f[image_key].bytes_list.value[0] for f in features]
      if any(len(b) != size for b in stored):
        return None
      labels = np.fromiter((f[label_key].int64_list.value[0] for f in features), np.int64,
                           len(records))
    except Exception:  # pylint: disable=broad-except  (protobuf's errors, a missing key)
      return None
    return (np.frombuffer(bytearray().join(stored), np.uint8).reshape((-1,) + self.image_shape),
            labels)

  def _example(self, record: bytes):
    """(image of image_shape or None, label) of a serialized example."""
    image_key, label_key = self._keys
    try:
      feature = self._example_class.FromString(record).features.feature
      image = self._decode(feature[image_key].bytes_list.value[0])
      if self._size:
        image = readers.resize_crop(image, self._size)
      label = feature[label_key].int64_list.value[0]
    except Exception:  # pylint: disable=broad-except  (protobuf's and OpenCV's errors, a missing key)
      return None, None
    return (image, label) if image.shape == self.image_shape else (None, None)

  def _substitute(self, row: int):
    """(image, label) of the first record after `row` (cyclically) that decodes."""
    for step in range(1, len(self)):
      image, label = self._example(self._records_of([(row + step) % len(self)])[0])
      if image is not None:
        return image, label
    raise UsageError(f'{self._where}: no record decodes: prepare the data set again')

  def _decoded(self, records: list, rows: np.ndarray):
    """(images, labels, skipped) of the records decoded one by one; a record that does not decode
    raises, or with skip_bad is replaced by the next one that does and marked in `skipped`."""
    images = np.empty((len(rows),) + self.image_shape, np.uint8)
    labels = np.empty(len(rows), np.int64)
    skipped = np.zeros(len(rows), bool)
    for i, record in enumerate(records):
      image, label = self._example(record)
      if image is None:
        if not self._skip_bad:
          raise UsageError(f'{self._where}: record {rows[i]} does not decode to a '
                           f'{self.image_shape} image: prepare the data set again, remove it, or '
                           f'set --config.skip_bad_records=True to skip and count such records')
        image, label = self._substitute(int(rows[i]))
        skipped[i] = True
      images[i], labels[i] = image, label
    return images, labels, skipped

  def read(self, rows: np.ndarray) -> dict:
    """{'image': (B, H, W, C) uint8, 'label': (B,) int64} of the rows, in their order; with
    skip_bad also 'skipped', marking the rows that did not decode (the next record that decodes
    took their place)."""
    records = self._records_of(rows)
    unpacked = self._unpack and self._unpacked(records)
    images, labels, skipped = ((*unpacked, np.zeros(len(rows), bool)) if unpacked else
                               self._decoded(records, rows))
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
