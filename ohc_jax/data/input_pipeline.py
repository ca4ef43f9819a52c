"""Loading: tfds data sets, RealDisp, vector files, image folders and scikit-learn's digits,
decoded once into memory (by ohc_jax.data.readers) or, in stream mode, read by index (tfds
ArrayRecord sets, vectors:FILE.npy memory-mapped: sources.py); either way a `Data` of two sources
that pipeline.py feeds. TensorFlow loads only for tfds data, in a child process."""

import dataclasses
import functools
import json
import os
from typing import NamedTuple, Optional

import numpy as np

from ohc_jax.core import imbalance
import ohc_jax.data.prepare as prepare
import ohc_jax.data.readers as readers
import ohc_jax.data.tfds_cache as tfds_cache
from ohc_jax.data.sources import ArraySource, ConcatSource, ImageSource, Split, Windows, subset
from ohc_jax.errors import UsageError, first_line


@dataclasses.dataclass(frozen=True)
class Data:
  """The training and evaluation splits and how to normalise their inputs."""
  train: Split
  eval: Split
  num_classes: int
  scale: float
  offset: float
  class_names: tuple[str, ...] = ()
  prior: np.ndarray | None = None  # Class proportions of an imbalanced set; None: uniform.


class _Loaded(NamedTuple):
  """What a loader reads: every point of the data set, the training split first."""
  split: Split
  test_start: Optional[int]  # The first row of the test split; None: no test split.
  num_classes: int
  scale: float  # Stored inputs map to the encoder's input range as x * scale + offset: colour
  offset: float  # images to [-1, 1], grey ones to [0, 1], as the reference (docs/fidelity.md).
  class_names: tuple[str, ...]


def _load_digits(config) -> _Loaded:
  del config
  from sklearn.datasets import load_digits
  digits = load_digits()
  images = digits.images.astype(np.uint8)[..., None]  # Values 0..16.
  # A fixed holdout split of the 1,797 images: the first 1,500 for training.
  return _Loaded(Split(images, digits.target.astype(np.int64)), 1500, 10, 1 / 16, 0.0,
                 tuple(str(d) for d in range(10)))


def _load_tfds(name: str, config) -> _Loaded:
  """The tfds data set `name` (as tfds.builder takes it: 'NAME', 'NAME/CONFIG', either with
  ':VERSION'), its config.train_split then config.eval_split; one split when they are equal."""
  splits = dict.fromkeys((config.train_split, config.eval_split))
  images, labels, info = tfds_cache.load(
      name, tuple(splits), config.data_dir, label_key=config.label_key, download=config.download,
      fix='point --config.data_dir (or TFDS_DATA_DIR) at a tfds data dir that holds it, or pass '
          '--config.download=True', image_key=config.image_key, image_size=config.image_size)
  colour = images.ndim == 4 and images.shape[-1] == 3
  scale, offset = (1 / 127.5, -1.0) if colour else (1 / 255, 0.0)
  return _Loaded(Split(images, labels), info['sizes'][0] if len(splits) == 2 else None,
                 info['num_classes'], scale, offset, tuple(info['names']))


def _load_realdisp(config) -> _Loaded:
  """RealDisp's rows memory-mapped from the cache, built and decoded in a child process."""
  sequence, starts, labels, names, window = tfds_cache.load_realdisp(config.data_dir,
                                                                    config.manual_dir)
  return _Loaded(Split(Windows(sequence, starts, window), labels), None, len(names), 1.0, 0.0,
                 names)


def _classes(labels: np.ndarray, path: str):
  """(labels as 0..C-1, class names): the sorted distinct labels of a file, numbered. Labels are
  class numbers >= 0 (integers, or floats holding integers) or strings; anything else is refused
  naming its first row."""
  if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.number) or labels.dtype.kind in 'US'):
    raise UsageError(f'{path}: labels must be a 1-D array of integers or strings, got '
                     f'{labels.dtype} of shape {labels.shape}')
  if labels.dtype.kind in 'fc':
    bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels.real)))
    if len(bad):
      raise UsageError(f'{path}: label row {bad[0]} is {labels[bad[0]]}, not an integer: labels '
                       f'are class numbers or strings; fix that row (and any like it) or drop it')
    labels = labels.real.astype(np.int64)
  if labels.dtype.kind in 'iu' and len(labels) and labels.min() < 0:
    row = int(np.argmax(labels < 0))
    raise UsageError(f'{path}: label row {row} is {labels[row]}: labels are class numbers 0, 1, '
                     f'... (or strings), and a negative one often marks an unlabelled point: '
                     f'drop those rows or number the classes from 0')
  values, labels = np.unique(labels, return_inverse=True)
  return labels.astype(np.int64), tuple(str(v) for v in values)


def _row_chunks(x: np.ndarray, nbytes: int = 1 << 24):
  """(first row, rows) of x in chunks of about nbytes; a memory-mapped file is read, not mapped,
  so a scan of it leaves no pages in this process (stream mode's memory stays a batch's)."""
  row_bytes = max(1, x.dtype.itemsize * int(np.prod(x.shape[1:])))
  rows = max(1, nbytes // row_bytes)
  if not (isinstance(x, np.memmap) and x.flags.c_contiguous):
    for start in range(0, len(x), rows):
      yield start, x[start:start + rows]
    return
  with open(x.filename, 'rb') as f:
    for start in range(0, len(x), rows):
      count = min(rows, len(x) - start)
      f.seek(x.offset + start * row_bytes)
      yield start, np.fromfile(f, x.dtype, count * (row_bytes // x.dtype.itemsize)).reshape(
          (count,) + x.shape[1:])


def _first_non_finite(x: np.ndarray) -> Optional[int]:
  """The first row of x holding a NaN or an infinity as float32 (what the model takes: a float64
  beyond its range is an infinity), or None."""
  if not np.issubdtype(x.dtype, np.floating):
    return None  # Integers are always finite.
  for start, chunk in _row_chunks(x):
    with np.errstate(over='ignore'):
      bad = np.flatnonzero(~np.isfinite(chunk.astype(np.float32)).reshape(len(chunk), -1).all(1))
    if len(bad):
      return start + int(bad[0])
  return None


def _read_vectors(config, mmap: bool = False):
  """(x (N, D) real, finite, labels 0..C-1, class names) of config.dataset's vectors file, checked
  before anything is written; x memory-mapped when `mmap`."""
  path = config.dataset.removeprefix('vectors:')
  if not (path.endswith(('.npz', '.npy')) and os.path.isfile(path)):
    raise UsageError(f'vectors:{path}: no such .npz or .npy file; give vectors:FILE.npz (holding '
                     f'{readers.ARRAY_CONVENTION}) or vectors:FILE.npy (with FILE_labels.npy)')
  x, y, _ = readers.read_arrays(path, labels=True, mmap=mmap)
  if np.iscomplexobj(x):
    raise UsageError(f'{path}: x is complex ({x.dtype}) and the encoder takes real inputs: save '
                     f'real features, e.g. numpy.concatenate([x.real, x.imag], axis=1) or abs(x)')
  if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
    raise UsageError(f'{path}: x must be a numeric (points, features) array, got x {x.dtype} '
                     f'{x.shape}')
  if y.ndim and len(x) != len(y):  # A 0-d y: _classes says labels are 1-D.
    raise UsageError(f'{path}: x has {len(x)} rows and y {len(y)} labels, so row '
                     f'{min(len(x), len(y))} has no partner: give one label per row of x')
  bad = _first_non_finite(x)
  if bad is not None:
    with np.errstate(over='ignore'):
      value = x[bad][~np.isfinite(x[bad].astype(np.float32))][0]
    raise UsageError(f'{path}: x row {bad} holds {value}, not a finite float32: drop or fix such '
                     f'rows (e.g. numpy.nan_to_num) before training')
  return (x, *_classes(y, path))


def _load_vectors(config) -> _Loaded:
  """`vectors:FILE.npz` or `vectors:FILE.npy` (readers.read_arrays: x (N, D), labels y) read into
  memory as float32 (stream mode memory-maps a .npy instead: _stream_vectors): e.g. text
  embeddings such as the reference's tweets (docs/fidelity.md)."""
  x, labels, names = _read_vectors(config)
  return _Loaded(Split(x.astype(np.float32, copy=False), labels), None, len(names), 1.0, 0.0,
                 names)


def _load_folder(config) -> _Loaded:
  """`folder:DIR` with one sub-folder of images per class (readers.image_files under each, decoded
  as RGB); the images must share one size."""
  path = config.dataset.removeprefix('folder:')
  if not os.path.isdir(path):
    raise UsageError(f'folder:{path} is not a folder: give a folder with one sub-folder of images '
                     f'per class')
  classes = {d: readers.image_files(os.path.join(path, d)) for d in sorted(os.listdir(path))
             if os.path.isdir(os.path.join(path, d))}
  names = tuple(d for d, files in classes.items() if files)
  if not names:
    raise UsageError(f'folder:{path} holds no sub-folder with images '
                     f'({", ".join(readers.IMAGE_EXTENSIONS)})')
  files = [(f, label) for label, name in enumerate(names) for f in classes[name]]
  images = [readers.read_image(f, 3) for f, _ in files]
  shapes = sorted({image.shape for image in images})
  if len(shapes) != 1:
    raise UsageError(f'folder:{path}: the images have sizes {shapes[:3]}...; resize them to one '
                     f'size')
  return _Loaded(Split(np.stack(images), np.array([label for _, label in files], np.int64)), None,
                 len(names), 1 / 127.5, -1.0, names)


# Data sets by name: the loader of each, `loader(config) -> _Loaded`.
DATASETS = {
    'digits': _load_digits,
    **{name: functools.partial(_load_tfds, name)
       for name in ('mnist', 'fashion_mnist', 'cifar10', 'cifar100', 'stl10')},
    'realdisp': _load_realdisp,
}
# Data sets by path, under a prefix: 'vectors:FILE.npz', 'folder:DIR'.
PATH_DATASETS = {'vectors:': _load_vectors, 'folder:': _load_folder}
TFDS_PREFIX = 'tfds:'  # Any tfds image data set: 'tfds:imagenette/160px', 'tfds:cifar10:3.0.2'.


def loader(dataset: str):
  """The loader of config.dataset, or None for an unknown one."""
  if dataset.startswith(TFDS_PREFIX) and dataset != TFDS_PREFIX:
    return functools.partial(_load_tfds, dataset.removeprefix(TFDS_PREFIX))
  prefix = next((p for p in PATH_DATASETS if dataset.startswith(p)), None)
  return PATH_DATASETS[prefix] if prefix else DATASETS.get(dataset)


def is_tfds(dataset: str) -> bool:
  """Whether config.dataset is a tfds data set (the image_* and *_split fields apply)."""
  return getattr(loader(dataset), 'func', None) is _load_tfds


def array_record_dir(name: str, data_dir) -> str | None:
  """The NAME[/CONFIG]/VERSION folder of a tfds data set in ArrayRecord (the highest version, or
  NAME's ':VERSION'): the set itself, or for one prepared as TFRecord its copy in the cache, made
  once (prepare.py); None when the set is not prepared there."""
  directory = prepare.prepared_dir(name, data_dir)
  if directory is None or prepare.file_format(directory) == 'array_record':
    return directory
  return prepare.array_record_copy(directory)


def input_mode(config) -> str:
  """'memory' or 'stream': config.input_mode, or for 'auto' stream when the data would exceed
  config.max_host_memory_gb and can be streamed: a prepared tfds set, either format (its decoded
  size), or vectors:FILE.npy (the size of its data in the file)."""
  if config.input_mode != 'auto':
    return config.input_mode
  size = (_npy_bytes(config.dataset.removeprefix('vectors:'))
          if config.dataset.startswith('vectors:') else _tfds_decoded_bytes(config))
  return 'stream' if size > config.max_host_memory_gb * 2**30 else 'memory'


def _npy_bytes(path: str) -> int:
  """The size of an .npy file's array, from its header alone; 0 for a .npz (never streamed) or a
  file that does not read (memory mode's loader names the problem)."""
  try:
    return np.load(path, mmap_mode='r').nbytes if path.endswith('.npy') else 0
  except (OSError, ValueError, EOFError):
    return 0


def _tfds_decoded_bytes(config) -> int:
  """The decoded size of a prepared tfds set (either format); 0 when there is none."""
  tfds_name = _tfds_name(config.dataset)
  directory = tfds_name and prepare.prepared_dir(tfds_name, config.data_dir)
  if not directory:
    return 0
  with open(os.path.join(directory, 'dataset_info.json')) as f:
    info = json.load(f)
  examples = sum(int(n) for s in info.get('splits', []) for n in s.get('shardLengths', []))
  shape = _stored_image_shape(directory, config.image_key)
  if shape and config.image_size:
    shape = [config.image_size, config.image_size, shape[-1]]
  return examples * int(np.prod(shape)) if shape and min(shape) > 0 else 0


def _stored_image_shape(directory: str, image_key: str):
  try:
    with open(os.path.join(directory, 'features.json')) as f:
      features = json.load(f)['featuresDict']['features']
    feature = features[image_key]
    dims = (feature.get('image') or feature['tensor'])['shape']['dimensions']
    return [int(d) for d in dims]  # -1: a size that varies.
  except (OSError, KeyError, ValueError, TypeError):
    return None


def _tfds_name(dataset: str) -> str | None:
  read = loader(dataset)
  return read.args[0] if getattr(read, 'func', None) is _load_tfds else None


def _load_stream(config) -> Data:
  """config.dataset read by index (sources.py), never held: a tfds data set from its ArrayRecord
  files, or vectors:FILE.npy memory-mapped. Subsets (max_examples, imbalance) are memory mode's."""
  name = _tfds_name(config.dataset)
  vectors = config.dataset.startswith('vectors:')
  if name is None and not vectors:
    raise UsageError(f'input_mode=stream streams tfds data sets, not {config.dataset!r} (nor any '
                     f'file but vectors:FILE.npy): set --config.input_mode=memory')
  for field in ('max_examples', 'imbalance'):
    if config[field]:
      raise UsageError(f'{field} is not available in stream mode: set --config.{field}=0 or '
                       f'--config.input_mode=memory')
  return _stream_vectors(config) if vectors else _stream_tfds(name, config)


def _stream_vectors(config) -> Data:
  """vectors:FILE.npy memory-mapped: each batch's rows read from the file as float32, only the
  labels (8 bytes a point) held; one split, as in memory mode."""
  if config.dataset.endswith('.npz'):
    raise UsageError(f'{config.dataset} cannot be streamed (a .npz is a zip, which cannot be '
                     f'memory-mapped): save x as FILE.npy and the labels as FILE_labels.npy '
                     f'(numpy.save), or set --config.input_mode=memory')
  x, labels, names = _read_vectors(config, mmap=True)
  source = ArraySource(x, labels, np.float32)
  return Data(source, source, len(names), 1.0, 0.0, names)


def _stream_tfds(name: str, config) -> Data:
  """The tfds data set `name` from its ArrayRecord files."""
  directory = array_record_dir(name, config.data_dir)
  if directory is None:
    raise UsageError(f'tfds {name} is not prepared under {config.data_dir or "$TFDS_DATA_DIR"}: '
                     f'point --config.data_dir (or TFDS_DATA_DIR) at a tfds data dir that holds it')
  try:
    splits = dict.fromkeys((config.train_split, config.eval_split))
    sources = [ImageSource(directory, s, config.image_key, config.label_key,
                           config.image_size, config.skip_bad_records) for s in splits]
  except UsageError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (tfds raises many kinds)
    raise UsageError(f'cannot stream {name} from {directory} ({first_line(e)}): check the split '
                     f'and key fields, or set --config.input_mode=memory') from None
  if len(sources) == 1:
    train = test = sources[0]
  elif config.protocol == 'paper':
    train = test = ConcatSource(*sources)
  else:
    train, test = sources
  colour = sources[0].image_shape[-1] == 3
  scale, offset = (1 / 127.5, -1.0) if colour else (1 / 255, 0.0)
  return Data(train, test, sources[0].num_classes, scale, offset, sources[0].names)


def load(config) -> Data:
  """Loads config.dataset under config.protocol ('paper': train+test for both; 'holdout'), in
  memory or, per input_mode, streamed."""
  if input_mode(config) == 'stream':
    return _load_stream(config)
  if config.skip_bad_records:
    raise UsageError('skip_bad_records skips records that do not decode in stream mode, and '
                     'memory mode decodes a data set whole: set --config.input_mode=stream, or '
                     '--config.skip_bad_records=False')
  read = loader(config.dataset)
  if read is None:
    raise UsageError(f'unknown dataset {config.dataset!r}')
  split, test_start, num_classes, scale, offset, names = read(config)
  if test_start is None or config.protocol == 'paper':  # One split: train and evaluate on it.
    train = test = split
  else:
    train, test = subset(split, slice(0, test_start)), subset(split, slice(test_start, None))
  both = lambda f: (f(train),) * 2 if train is test else (f(train), f(test))  # One copy if shared.
  if config.max_examples:
    train, test = both(lambda s: subset(s, slice(0, config.max_examples)))
  prior = None
  if config.imbalance:
    if config.num_clusters != num_classes:
      raise UsageError(f'imbalance: the prior has one entry per class, and {config.dataset} has '
                       f'{num_classes}: set --config.num_clusters={num_classes}')
    keep = imbalance.keep_probabilities(config.imbalance, num_classes)
    train, test = both(lambda s: subset(s, imbalance.subsample(s.labels, keep, config.seed)))
    prior = keep / keep.sum()
  return Data(train, test, num_classes, scale, offset, names, prior)
