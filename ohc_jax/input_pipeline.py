"""Data: tfds data sets and scikit-learn's digits, decoded once into memory, fed by tf.data."""

import dataclasses
import os
from typing import Iterator

import numpy as np

from ohc_jax import imbalance
from ohc_jax.errors import UsageError

# Per data set: the tfds name, its splits, label key and how stored pixels map to the encoder's
# input range (colour images to [-1, 1], grey ones to [0, 1], as the reference).
_TFDS = {
    'mnist': ('mnist', 'train', 'test', 'label'),
    'fashion_mnist': ('fashion_mnist', 'train', 'test', 'label'),
    'cifar10': ('cifar10', 'train', 'test', 'label'),
    'cifar100': ('cifar100', 'train', 'test', 'label'),
    'stl10': ('stl10', 'train', 'test', 'label'),
}


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


def load(config) -> Data:
  """Loads config.dataset under config.protocol ('paper': train+test for both; 'holdout')."""
  if config.dataset == 'digits':
    train, test, num_classes, scale, offset, names = _load_digits()
  elif config.dataset in _TFDS:
    train, test, num_classes, scale, offset, names = _load_tfds(
        config.dataset, config.data_dir, config.download)
  else:
    raise UsageError(f'unknown dataset {config.dataset!r}')
  if config.protocol == 'paper':
    train = test = _concat(train, test)
  if config.max_examples:
    train, test = (Split(s.images[:config.max_examples], s.labels[:config.max_examples])
                   for s in (train, test))
  prior = None
  if config.imbalance:
    keep = imbalance.keep_probabilities(config.imbalance, num_classes)
    train, test = (Split(s.images[rows], s.labels[rows]) for s in (train, test)
                   for rows in [imbalance.subsample(s.labels, keep, config.seed)])
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
    self._tf = _hide_gpus_from_tf()
    self._images = self._tf.constant(split.images)
    self._labels = self._tf.constant(split.labels)
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
    ds = tf.data.Dataset.from_tensor_slices(rows)
    ds = ds.map(lambda idx: {'image': tf.gather(self._images, idx),
                             'label': tf.gather(self._labels, idx)})
    return ds.prefetch(2).as_numpy_iterator()


def eval_batches(split: Split, global_batch: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[tuple[dict, int]]:
  """The whole split in order, in global batches (the last padded): yields (this process's rows of
  the batch, number of real points in the global batch)."""
  local = global_batch // process_count
  for start in range(0, len(split), global_batch):
    valid = min(global_batch, len(split) - start)
    lo = start + process_index * local
    images = split.images[lo:min(lo + local, start + valid)]
    if len(images) < local:
      pad = np.zeros((local - len(images),) + split.images.shape[1:], split.images.dtype)
      images = np.concatenate([images, pad])
    yield {'image': images}, valid
