"""tiny_images 1.0.0, the tests' tfds data set: 8x8 RGB images of 3 classes (a, b, c), each image's
brightness set by its class plus noise, prepared as TFRecord by a child process, since the tests
that read it must hold no TensorFlow of their own."""

import subprocess
import sys

_PREPARE = '''
import sys, numpy as np, tensorflow as tf, tensorflow_datasets as tfds
data_dir, seed, train, test = sys.argv[1], *map(int, sys.argv[2:])
rng = np.random.default_rng(seed)
def split(n):
  labels = rng.integers(0, 3, n)
  images = np.clip(labels[:, None, None, None] * 80 + rng.integers(0, 60, (n, 8, 8, 3)), 0, 255)
  return tf.data.Dataset.from_tensor_slices({'image': images.astype(np.uint8), 'label': labels})
splits = {'train': split(train), 'test': split(test)}
tfds.dataset_builders.TfDataBuilder(
    name='tiny_images', version='1.0.0', split_datasets=splits,
    features=tfds.features.FeaturesDict({'image': tfds.features.Image(shape=(8, 8, 3)),
                                         'label': tfds.features.ClassLabel(names=['a', 'b', 'c'])}),
    data_dir=data_dir).download_and_prepare()
'''


def prepare(data_dir, train: int, test: int, seed: int = 0) -> None:
  """Prepares tiny_images in data_dir with `train` and `test` examples drawn by `seed`."""
  done = subprocess.run([sys.executable, '-c', _PREPARE, str(data_dir), str(seed), str(train),
                         str(test)], capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
