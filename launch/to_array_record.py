r"""Copies a prepared tfds data set from TFRecord into ArrayRecord, the random-access format
stream mode reads, ahead of time (stream mode makes such a copy in its cache by itself:
ohc_jax/data/prepare.py; ohc_jax/data/sources.py reads it; `tfds convert_format` does this too, but needs
Apache Beam).

  python launch/to_array_record.py /work/shared/data/tfds/cifar10/3.0.2 /tmp/tfds_ar/cifar10/3.0.2
  python launch/to_array_record.py SRC /tmp/tfds_ar/cifar10_raw/3.0.2 --encoding=raw

--encoding=png (the default) copies records byte for byte, shard for shard. --encoding=raw stores
each image (fixed-size sets only) as its raw uint8 bytes, a tfds Tensor feature: 1.24x CIFAR-10's
PNGs on disk, and streamed without decoding (docs/benchmarks.md). Either way dataset_info.json
says array_record, and the copy is a tfds data set that tfds reads too.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ohc_jax.data import prepare  # noqa: E402
from ohc_jax.errors import UsageError  # noqa: E402


def _raw(src: str, image_key: str):
  """(record -> record with the image as raw bytes, the data set's features so stored)."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  features = tfds.builder_from_directory(src).info.features
  image = features[image_key]
  if not isinstance(image, tfds.features.Image) or None in image.shape:
    sys.exit(f'error: {src}: --encoding=raw needs a fixed-size Image feature {image_key!r}, '
             f'not {image}: use --encoding=png')

  def convert(record: bytes) -> bytes:
    example = tf.train.Example.FromString(record)
    stored = example.features.feature[image_key].bytes_list.value
    stored[0] = np.ascontiguousarray(image.decode_example_np(stored[0]), np.uint8).tobytes()
    return example.SerializeToString()

  raw = tfds.features.Tensor(shape=image.shape, dtype=image.np_dtype,
                             encoding=tfds.features.Encoding.BYTES)
  return convert, tfds.features.FeaturesDict({k: raw if k == image_key else f
                                              for k, f in features.items()})


def convert(src: str, out: str, encoding: str = 'png', image_key: str = 'image') -> None:
  change, features = _raw(src, image_key) if encoding == 'raw' else (lambda r: r, None)
  prepare.convert(src, out, change)
  if features is not None:
    features.save_config(out)


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('src', help='a prepared tfds data set: DATA_DIR/NAME/VERSION')
  parser.add_argument('out', help='where the ArrayRecord copy goes: OUT_DIR/NAME/VERSION')
  parser.add_argument('--encoding', choices=('png', 'raw'), default='png')
  parser.add_argument('--image_key', default='image')
  args = parser.parse_args()
  try:
    convert(args.src, args.out, args.encoding, args.image_key)
  except UsageError as e:
    sys.exit(f'error: {e}')
