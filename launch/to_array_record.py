r"""Copies a prepared tfds data set from TFRecord into ArrayRecord, the random-access format
ohc_jax/data/sources.py reads (`tfds convert_format` does this too, but needs Apache Beam).

  python launch/to_array_record.py /work/shared/data/tfds/cifar10/3.0.2 /tmp/tfds_ar/cifar10/3.0.2
  python launch/to_array_record.py SRC /tmp/tfds_ar/cifar10_raw/3.0.2 --encoding=raw

--encoding=png (the default) copies records byte for byte, shard for shard. --encoding=raw stores
each image (fixed-size sets only) as its raw uint8 bytes, a tfds Tensor feature: 1.24x CIFAR-10's
PNGs on disk, and streamed without decoding (docs/benchmarks.md). Either way dataset_info.json
says array_record, and the copy is a tfds data set that tfds reads too.
"""

import argparse
import glob
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ohc_jax.data import array_record  # noqa: E402


def _raw(src: str, image_key: str):
  """(record -> record with the image as raw bytes, the data set's features so stored)."""
  import tensorflow_datasets as tfds
  features = tfds.builder_from_directory(src).info.features
  image = features[image_key]
  if not isinstance(image, tfds.features.Image) or None in image.shape:
    sys.exit(f'error: {src}: --encoding=raw needs a fixed-size Image feature {image_key!r}, '
             f'not {image}: use --encoding=png')
  from tensorflow_datasets.proto import tf_example_pb2

  def convert(record: bytes) -> bytes:
    example = tf_example_pb2.Example.FromString(record)
    stored = example.features.feature[image_key].bytes_list.value
    stored[0] = image.decode_example_np(stored[0]).tobytes()
    return example.SerializeToString()

  raw = tfds.features.Tensor(shape=image.shape, dtype=image.np_dtype,
                             encoding=tfds.features.Encoding.BYTES)
  return convert, tfds.features.FeaturesDict({k: raw if k == image_key else f
                                              for k, f in features.items()})


def convert(src: str, out: str, encoding: str = 'png', image_key: str = 'image') -> None:
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  with open(os.path.join(src, 'dataset_info.json')) as f:
    info = json.load(f)
  change, features = _raw(src, image_key) if encoding == 'raw' else (lambda r: r, None)
  for split in info['splits']:
    paths = sorted(glob.glob(os.path.join(src, f"{info['name']}-{split['name']}.tfrecord-*")))
    for index, path in enumerate(paths):
      array_record.write_records(array_record.shard_path(out, info['name'], split['name'], index,
                                                         len(paths)),
                                 map(change, tf.data.TFRecordDataset(path).as_numpy_iterator()))
  info['fileFormat'] = 'array_record'
  with open(os.path.join(out, 'dataset_info.json'), 'w') as f:
    json.dump(info, f, indent=2)
  for name in os.listdir(src):  # features.json, label names.
    if not name.startswith(info['name'] + '-') and name != 'dataset_info.json':
      shutil.copy(os.path.join(src, name), out)
  if features is not None:
    features.save_config(out)


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('src', help='a prepared tfds data set: DATA_DIR/NAME/VERSION')
  parser.add_argument('out', help='where the ArrayRecord copy goes: OUT_DIR/NAME/VERSION')
  parser.add_argument('--encoding', choices=('png', 'raw'), default='png')
  parser.add_argument('--image_key', default='image')
  args = parser.parse_args()
  convert(args.src, args.out, args.encoding, args.image_key)
