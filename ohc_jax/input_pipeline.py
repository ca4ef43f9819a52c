"""Data: tfds data sets, RealDisp, vector files, image folders and scikit-learn's digits, decoded
once into memory, fed by tf.data."""

import dataclasses
import os
import tempfile
from typing import Iterator

import numpy as np

from ohc_jax import imbalance
from ohc_jax.errors import UsageError

# Per data set: the tfds name, its splits, label key and how stored pixels map to the encoder's
# input range (colour images to [-1, 1], grey ones to [0, 1], as the reference: docs/fidelity.md).
_TFDS = {
    'mnist': ('mnist', 'train', 'test', 'label'),
    'fashion_mnist': ('fashion_mnist', 'train', 'test', 'label'),
    'cifar10': ('cifar10', 'train', 'test', 'label'),
    'cifar100': ('cifar100', 'train', 'test', 'label'),
    'stl10': ('stl10', 'train', 'test', 'label'),
}


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


def _concat(a: Split, b: Split) -> Split:
  return Split(np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]))


def subset(split: Split, rows) -> Split:
  """The rows (indices or a slice) of a split; windows stay windows."""
  images = split.images
  return Split(images.take(rows) if isinstance(images, Windows) else images[rows],
               split.labels[rows])


def _hide_gpus_from_tf():
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  return tf


def _load_digits() -> tuple[Split, Split, int, float, float, tuple[str, ...]]:
  from sklearn.datasets import load_digits
  digits = load_digits()
  images = digits.images.astype(np.uint8)[..., None]  # Values 0..16.
  labels = digits.target.astype(np.int64)
  cut = 1500  # A fixed holdout split of the 1,797 images.
  names = tuple(str(d) for d in range(10))
  return (Split(images[:cut], labels[:cut]), Split(images[cut:], labels[cut:]), 10, 1 / 16, 0.0,
          names)


def _load_tfds(dataset: str, data_dir, download: bool):
  tf = _hide_gpus_from_tf()
  import tensorflow_datasets as tfds
  name, train_split, test_split, label_key = _TFDS[dataset]
  data_dir = data_dir or os.environ.get('TFDS_DATA_DIR')
  splits = []
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    for split in (train_split, test_split):
      ds = tfds.load(name, split=split, data_dir=data_dir, download=download)
      ds = ds.map(lambda e: (e['image'], e[label_key])).batch(8192)
      images, labels = zip(*tfds.as_numpy(ds))
      splits.append(Split(np.concatenate(images), np.concatenate(labels).astype(np.int64)))
  except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as e:
    where = data_dir or '~/tensorflow_datasets'
    raise UsageError(
        f'data set {name!r} is not prepared under {where}: point --config.data_dir (or '
        f'TFDS_DATA_DIR) at a tfds data dir that holds it, or pass --config.download=True '
        f'({type(e).__name__})') from None
  label_feature = builder.info.features[label_key]
  image = splits[0].images
  colour = image.ndim == 4 and image.shape[-1] == 3
  scale, offset = (1 / 127.5, -1.0) if colour else (1 / 255, 0.0)
  names = tuple(label_feature.names) if hasattr(label_feature, 'names') else ()
  return splits[0], splits[1], label_feature.num_classes, scale, offset, names


def _load_realdisp(config):
  from ohc_jax.datasets import realdisp
  sequence, starts, labels, names = realdisp.load(config.data_dir, config.manual_dir)
  return (Split(Windows(sequence, starts, realdisp.WINDOW), labels), None, len(names), 1.0, 0.0,
          names)


def _classes(labels: np.ndarray, path: str):
  """(labels as 0..C-1, class names): the sorted distinct labels of a file, numbered."""
  if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype.kind in 'US'):
    raise UsageError(f'{path}: labels must be a 1-D array of integers or strings, got '
                     f'{labels.dtype} of shape {labels.shape}')
  values, labels = np.unique(labels, return_inverse=True)
  return labels.astype(np.int64), tuple(str(v) for v in values)


def _load_vectors(path: str):
  """`vectors:FILE.npz` with arrays x (N, D) and y (N,), or `vectors:FILE.npy` (x) next to
  FILE_labels.npy (y): e.g. text embeddings such as the reference's tweets (docs/fidelity.md)."""
  if path.endswith('.npz') and os.path.isfile(path):
    with np.load(path) as f:
      if not {'x', 'y'} <= set(f.files):
        raise UsageError(f'{path} holds arrays {sorted(f.files)}; a vectors .npz needs x (points '
                         f'x features) and y (labels)')
      x, y = f['x'], f['y']
  elif path.endswith('.npy') and os.path.isfile(path):
    labels_path = path[:-4] + '_labels.npy'
    if not os.path.isfile(labels_path):
      raise UsageError(f'{path} needs its labels in {labels_path} (or give a .npz with x and y)')
    x, y = np.load(path), np.load(labels_path)
  else:
    raise UsageError(f'vectors:{path}: no such .npz or .npy file; give vectors:FILE.npz (arrays x '
                     f'and y) or vectors:FILE.npy (with FILE_labels.npy)')
  if x.ndim != 2 or not np.issubdtype(x.dtype, np.number) or len(x) != len(y):
    raise UsageError(f'{path}: x must be a numeric (points, features) array with one label in y '
                     f'per row, got x {x.dtype} {x.shape} and y {y.shape}')
  labels, names = _classes(y, path)
  return Split(x.astype(np.float32), labels), None, len(names), 1.0, 0.0, names


def _load_folder(path: str):
  """`folder:DIR` with one sub-folder of .png/.jpg images per class, read by tfds's ImageFolder;
  images must share one size."""
  tf = _hide_gpus_from_tf()
  import tensorflow_datasets as tfds
  if not os.path.isdir(path):
    raise UsageError(f'folder:{path} is not a folder: give a folder with one sub-folder of images '
                     f'per class')
  with tempfile.TemporaryDirectory() as root:  # ImageFolder wants ROOT/SPLIT/CLASS/IMAGE.
    os.symlink(os.path.abspath(path), os.path.join(root, 'train'))
    builder = tfds.ImageFolder(root)
    if 'train' not in builder.info.splits:
      raise UsageError(f'folder:{path} holds no sub-folder with .png or .jpg images')
    names = tuple(builder.info.features['label'].names)
    images, labels, shapes = [], [], set()
    try:
      for example in tfds.as_numpy(builder.as_dataset(split='train', shuffle_files=False)):
        images.append(example['image'])
        labels.append(example['label'])
        shapes.add(example['image'].shape)
    except tf.errors.InvalidArgumentError as e:
      raise UsageError(f'folder:{path}: an image does not decode ({e.message.splitlines()[0]})')
  if len(shapes) != 1:
    raise UsageError(f'folder:{path}: the images have sizes {sorted(shapes)[:3]}...; resize them '
                     f'to one size')
  return (Split(np.stack(images), np.asarray(labels, np.int64)), None, len(names), 1 / 127.5, -1.0,
          names)


def load(config) -> Data:
  """Loads config.dataset under config.protocol ('paper': train+test for both; 'holdout')."""
  dataset = config.dataset
  if dataset == 'digits':
    train, test, num_classes, scale, offset, names = _load_digits()
  elif dataset in _TFDS:
    train, test, num_classes, scale, offset, names = _load_tfds(
        dataset, config.data_dir, config.download)
  elif dataset == 'realdisp':
    train, test, num_classes, scale, offset, names = _load_realdisp(config)
  elif dataset.startswith('vectors:'):
    train, test, num_classes, scale, offset, names = _load_vectors(dataset[len('vectors:'):])
  elif dataset.startswith('folder:'):
    train, test, num_classes, scale, offset, names = _load_folder(dataset[len('folder:'):])
  else:
    raise UsageError(f'unknown dataset {dataset!r}')
  if test is None:  # A single split: train and evaluate on it (validate refuses 'holdout').
    test = train
  elif config.protocol == 'paper':
    train = test = _concat(train, test)
  both = lambda f: (f(train),) * 2 if train is test else (f(train), f(test))  # One copy if shared.
  if config.max_examples:
    train, test = both(lambda s: subset(s, slice(0, config.max_examples)))
  prior = None
  if config.imbalance:
    if config.num_clusters != num_classes:
      raise UsageError(f'imbalance: the prior has one entry per class, and {dataset} has '
                       f'{num_classes}: set --config.num_clusters={num_classes}')
    keep = imbalance.keep_probabilities(config.imbalance, num_classes)
    train, test = both(lambda s: subset(s, imbalance.subsample(s.labels, keep, config.seed)))
    prior = keep / keep.sum()
  return Data(train, test, num_classes, scale, offset, names, prior)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the training points in an epoch: a function of (seed, epoch) alone."""
  return np.random.default_rng([seed, epoch]).permutation(n)


class TrainFeed:
  """Per-epoch tf.data pipelines over one process's rows of each global batch.

  Every process shuffles the same way and takes its slice of each global batch, so the global
  batches, and therefore the run, do not depend on the number of processes or devices.
  """

  def __init__(self, split: Split, global_batch: int, seed: int, process_index: int = 0,
               process_count: int = 1):
    self._tf = tf = _hide_gpus_from_tf()
    labels, windows = tf.constant(split.labels), split.images
    if isinstance(windows, Windows):  # Gathered by NumPy: the windows overlap.
      def gather(idx):
        images = tf.numpy_function(lambda i: windows[i], [idx], tf.as_dtype(windows.dtype))
        images.set_shape((None,) + windows.shape[1:])
        return {'image': images, 'label': tf.gather(labels, idx)}
    else:
      images = tf.constant(split.images)
      gather = lambda idx: {'image': tf.gather(images, idx), 'label': tf.gather(labels, idx)}
    self._gather = gather
    self._n = len(split)
    self._seed = seed
    self._global_batch = global_batch
    self._local_batch = global_batch // process_count
    self._offset = process_index * self._local_batch
    self.steps_per_epoch = self._n // global_batch

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
    """Batches {'image', 'label'} of the epoch from start_step on (drop remainder)."""
    tf = self._tf
    perm = epoch_permutation(self._n, self._seed, epoch)
    perm = perm[:self.steps_per_epoch * self._global_batch].reshape(self.steps_per_epoch, -1)
    rows = perm[start_step:, self._offset:self._offset + self._local_batch]
    ds = tf.data.Dataset.from_tensor_slices(rows).map(self._gather)
    return ds.prefetch(2).as_numpy_iterator()


def eval_batches(split: Split, global_batch: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[tuple[dict, int]]:
  """The whole split in order, in global batches (the last padded): yields (this process's rows of
  the batch with 'valid' marking the real ones, number of real points in the global batch)."""
  local = global_batch // process_count
  for start in range(0, len(split), global_batch):
    valid = min(global_batch, len(split) - start)
    lo = start + process_index * local
    images = split.images[lo:min(lo + local, start + valid)]
    real = np.arange(local) < len(images)
    if len(images) < local:
      pad = np.zeros((local - len(images),) + split.images.shape[1:], split.images.dtype)
      images = np.concatenate([images, pad])
    yield {'image': images, 'valid': real}, valid
