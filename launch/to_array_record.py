r"""Copies a prepared tfds data set from TFRecord into ArrayRecord, the random-access format
ohc_jax/streaming.py reads (`tfds convert_format` does this too, but needs Apache Beam).

  python launch/to_array_record.py /work/shared/data/tfds/cifar10/3.0.2 /tmp/tfds_ar/cifar10/3.0.2

Records are copied byte for byte, shard for shard; dataset_info.json says array_record.
"""

import glob
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ohc_jax import streaming  # noqa: E402


def convert(src: str, out: str) -> None:
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  with open(os.path.join(src, 'dataset_info.json')) as f:
    info = json.load(f)
  for split in info['splits']:
    paths = sorted(glob.glob(os.path.join(src, f"{info['name']}-{split['name']}.tfrecord-*")))
    for index, path in enumerate(paths):
      streaming.write_records(streaming.shard_path(out, info['name'], split['name'], index,
                                                   len(paths)),
                              tf.data.TFRecordDataset(path).as_numpy_iterator())
  info['fileFormat'] = 'array_record'
  with open(os.path.join(out, 'dataset_info.json'), 'w') as f:
    json.dump(info, f, indent=2)
  for name in os.listdir(src):  # features.json, label names.
    if not name.startswith(info['name'] + '-') and name != 'dataset_info.json':
      shutil.copy(os.path.join(src, name), out)


if __name__ == '__main__':
  convert(*sys.argv[1:])
