"""The tfds path, under tfds.testing.mock_data (no real data needed): the five named sets and any
tfds image data set as tfds:NAME, resized or not, including configs/imagenet64.py."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ohc_jax import configuration
from ohc_jax.data import input_pipeline
from ohc_jax.run import train
from ohc_jax.errors import UsageError

pytestmark = pytest.mark.slow  # Trains on mock data.


def _run(config, tmp_path, num_examples):
  config.num_epochs = 1
  config.progress_bar = False
  config.plots_every_epochs = 0
  with tfds.testing.mock_data(num_examples=num_examples):
    results = train.train_and_evaluate(config, str(tmp_path))
  return results, json.loads((tmp_path / 'metrics.jsonl').read_text().splitlines()[-1])


def test_cifar10_runs_under_mock_data(tmp_path):
  config = configuration.from_file(f'{configuration.CONFIG_DIR}/cifar10.py')
  config.batch_size = 64
  config.eval_batch_size = 64
  config.protocol = 'holdout'
  results, record = _run(config, tmp_path, 192)
  assert results['num_train'] == 192 and results['num_eval'] == 192
  assert record['step'] == 3
  assert sum(record['hard_sizes']) == 192


@pytest.mark.parametrize('dataset,image_size,shape,scale', [
    ('tfds:svhn_cropped', 0, (32, 32, 3), 1 / 127.5),  # Colour: [-1, 1].
    ('tfds:mnist', 20, (20, 20, 1), 1 / 255),  # Grey: [0, 1]; stored at 28x28.
    ('tfds:cifar10:3.0.2', 40, (40, 40, 3), 1 / 127.5),  # Grown, with a version.
])
def test_any_tfds_image_set_trains(tmp_path, dataset, image_size, shape, scale):
  config = configuration.base_config()
  config.update(dataset=dataset, image_size=image_size, batch_size=32, eval_batch_size=32)
  configuration.validate(config)
  with tfds.testing.mock_data(num_examples=48):
    data = input_pipeline.load(config)
  assert data.train.images.shape == (96,) + shape and data.train.images.dtype == np.uint8
  assert (data.scale, data.offset) == ((scale, -1.0) if shape[-1] == 3 else (scale, 0.0))
  results, record = _run(config, tmp_path, 48)
  assert results['num_train'] == 96 and record['step'] == 3  # Paper: train + test.
  assert sum(record['hard_sizes']) == 96
  # Labelling the set takes its name (with the version) and resizes as training did.
  from ohc_jax import predict
  with tfds.testing.mock_data(num_examples=48):
    code = predict.run([f'--workdir={tmp_path}', f'--input={dataset}:test',
                        f'--output={tmp_path / "labels.csv"}'])
  assert code == 0 and len((tmp_path / 'labels.csv').read_text().splitlines()) == 49


def test_resize_keeps_the_centre_of_the_shorter_side():
  import tensorflow as tf
  from ohc_jax.data import tfds_cache
  image = np.zeros((40, 80, 3), np.uint8)
  image[:, 20:60] = 200  # The central 40x40 square.
  out = tfds_cache._resize(tf.constant(image), 20).numpy()  # pylint: disable=protected-access
  assert out.shape == (20, 20, 3) and out.dtype == np.uint8
  # The crop is the square, scaled by one half (the antialiasing filter blurs its outer columns).
  assert (out[:, 1:-1] == 200).all() and out.min() > 150
  tall = tfds_cache._resize(tf.zeros((90, 30, 1), tf.uint8), 10)  # pylint: disable=protected-access
  assert tall.shape == (10, 10, 1)


def test_one_split_when_train_and_eval_split_are_equal():
  config = configuration.base_config()
  config.update(dataset='tfds:svhn_cropped', eval_split='train')
  with tfds.testing.mock_data(num_examples=10):
    data = input_pipeline.load(config)
  assert len(data.train) == 10 and data.eval is data.train


@pytest.mark.parametrize('override,message', [
    (dict(image_key='digits'), "no feature 'digits'.*--config.image_key="),
    (dict(image_key='label'), "'label' is a ClassLabel, not an Image.*--config.image_key="),
    (dict(label_key='image'), "'image' is a Image, not a ClassLabel.*--config.label_key="),
    (dict(dataset='tfds:imagenet2012'), r'vary in size.*--config.image_size=N'),
    (dict(dataset='tfds:no_such_set'), "tfds has no data set 'no_such_set'"),
])
def test_bad_features_and_names_are_one_line_errors(override, message):
  config = configuration.base_config()
  config.update({'dataset': 'tfds:svhn_cropped', **override})
  with tfds.testing.mock_data(num_examples=4), pytest.raises(UsageError, match=message) as error:
    input_pipeline.load(config)
  assert '\n' not in str(error.value)


def test_imagenet64_config_runs_under_mock_data(tmp_path):
  config = configuration.from_file(f'{configuration.CONFIG_DIR}/imagenet64.py')
  assert (config.num_clusters, config.encoder, config.image_size) == (1000, 'resnet18', 64)
  config.batch_size = 64
  config.eval_batch_size = 64
  config.log_every_steps = 1
  results, record = _run(config, tmp_path, 64)  # 128 points (train + validation): 2 steps.
  assert results['num_train'] == 128 and record['step'] == 2
  assert len(record['hard_sizes']) == 1000 and sum(record['hard_sizes']) == 128
