"""Writing tfds data sets in ArrayRecord, the random-access format stream mode reads
(sources.ImageSource): shards, dataset_info.json and features.json, and examples serialized with
tfds's own tf.train.Example class (`tensorflow_datasets.proto`, no TensorFlow). Used by
launch/to_array_record.py, launch/make_synthetic_images.py and the tests."""

import json
import os
from typing import Iterable, Iterator

import numpy as np

_TEMPLATE = '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'
# Group size 1: each record read alone, as random access wants. Uncompressed: the images are PNG
# or JPEG already, or raw; ArrayRecord's default zstd saved nothing on CIFAR-10's PNG records (139
# against 140 MB) and 5% on raw ones, and cost 4.8 against 3.3 ms of CPU per batch of 256 read
# (2026-12-05, one process, the reading threads' CPU time included).
WRITER_OPTIONS = 'group_size:1,uncompressed'


def shard_path(dataset_dir: str, name: str, split: str, index: int, count: int) -> str:
  """Where tfds looks for shard `index` of `count` of a split in ArrayRecord."""
  return os.path.join(dataset_dir, _TEMPLATE.format(
      DATASET=name, SPLIT=split, FILEFORMAT='array_record',
      SHARD_X_OF_Y=f'{index:05d}-of-{count:05d}'))


def write_records(path: str, records: Iterable[bytes]) -> None:
  """One ArrayRecord shard, written with WRITER_OPTIONS."""
  from array_record.python import array_record_module
  os.makedirs(os.path.dirname(path), exist_ok=True)
  writer = array_record_module.ArrayRecordWriter(path, WRITER_OPTIONS)
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
  from tensorflow_datasets.proto import tf_example_pb2
  for image, label in zip(images, labels):
    if encoding == 'raw':
      data = np.ascontiguousarray(image, np.uint8).tobytes()
    else:
      ok, png = cv2.imencode('.png', image[..., ::-1] if image.shape[-1] == 3 else image)
      assert ok
      data = png.tobytes()
    example = tf_example_pb2.Example()
    example.features.feature['image'].bytes_list.value.append(data)
    example.features.feature['label'].int64_list.value.append(int(label))
    yield example.SerializeToString()
