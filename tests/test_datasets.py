"""Data sets and encoders: the paper's tfds sets (mock data), vector files, image folders, resnet18,
the configs, and one clear error for each bad input."""

import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from ohc_jax import configuration, models
from ohc_jax.data import input_pipeline, pipeline, readers, sources
from ohc_jax.run import train
from ohc_jax.errors import UsageError


def _config(name='default.py', **overrides):
  config = configuration.from_file(os.path.join(configuration.CONFIG_DIR, name))
  config.update(progress_bar=False, plots_every_epochs=0, **overrides)
  return config


@pytest.mark.parametrize('name,shape,classes', [
    ('stl10', (96, 96, 3), 10), ('cifar100', (32, 32, 3), 100), ('mnist', (28, 28, 1), 10),
    ('fashion_mnist', (28, 28, 1), 10)])
def test_paper_data_sets_load(name, shape, classes):
  config = _config(f'{name}.py')
  configuration.validate(config)
  assert config.num_clusters == classes
  with tfds.testing.mock_data(num_examples=8):
    data = input_pipeline.load(config)
  assert data.train.images.shape == (16,) + shape and data.num_classes == classes


def test_every_config_validates():
  names = configuration.config_names()
  assert {'default', 'cifar10', 'realdisp'} <= set(names) and '__init__' not in names
  for name in names:
    configuration.validate(configuration.from_file(configuration.config_path(name)))


@pytest.mark.parametrize('encoder,size', [('simp', 96), ('resnet18', 32), ('resnet18', 96)])
def test_image_encoders_follow_the_input_size(encoder, size):
  model = models.make_encoder(_config('stl10.py', encoder=encoder))
  x = np.zeros((2, size, size, 3), np.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  assert jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape == (2, 128)


def _digit_vectors(tmp_path):
  from sklearn.datasets import load_digits
  digits = load_digits()
  path = tmp_path / 'emb.npz'
  np.savez(path, x=digits.data.astype(np.float32), y=np.array(digits.target_names)[digits.target])
  return path, digits


@pytest.mark.slow
def test_vectors_run_with_probes(tmp_path):
  path, digits = _digit_vectors(tmp_path)
  config = _config(dataset=f'vectors:{path}', num_epochs=2, probe_every=1)
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['num_train'] == len(digits.data)
  record = json.loads((tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()[-1])
  assert record['linear_probe_acc'] > 0.5 and record['knn_probe_acc'] > 0.5
  np.save(tmp_path / 'x.npy', digits.data)
  np.save(tmp_path / 'x_labels.npy', digits.target)
  data = input_pipeline.load(_config(dataset=f'vectors:{tmp_path / "x.npy"}'))
  assert data.train.images.shape == (1797, 64) and data.num_classes == 10


def test_image_folder(tmp_path):
  for cls, value in (('cat', 10), ('dog', 200)):
    (tmp_path / 'pics' / cls).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(np.full((8, 6, 3), value + i, np.uint8)).save(tmp_path / 'pics' / cls / f'{i}.png')
  data = input_pipeline.load(_config(dataset=f'folder:{tmp_path / "pics"}'))
  assert data.train.images.shape == (6, 8, 6, 3) and data.class_names == ('cat', 'dog')
  assert sorted(data.train.images[:, 0, 0, 0] // 100) == [0, 0, 0, 2, 2, 2]
  np.testing.assert_array_equal(data.train.labels, data.train.images[:, 0, 0, 0] >= 100)
  Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / 'pics' / 'cat' / 'odd.png')
  with pytest.raises(UsageError, match='resize them to one size'):
    input_pipeline.load(_config(dataset=f'folder:{tmp_path / "pics"}'))


@pytest.mark.parametrize('overrides,message', [
    (dict(dataset='vectors:/nonexistent.npz'), 'no such .npz or .npy file'),
    (dict(dataset='vectors:BAD'), 'holds the arrays features; an array file holds x \\(inputs\\), '
                                  'y \\(labels\\)'),
    (dict(dataset='vectors:NOLABELS'), 'needs its labels in'),
    (dict(dataset='folder:/nonexistent'), 'is not a folder'),
])
def test_bad_data_files(tmp_path, overrides, message):
  np.savez(tmp_path / 'bad.npz', features=np.zeros((3, 2)))
  np.save(tmp_path / 'nolabels.npy', np.zeros((3, 2)))
  dataset = overrides['dataset'].replace('BAD', str(tmp_path / 'bad.npz')).replace(
      'NOLABELS', str(tmp_path / 'nolabels.npy'))
  with pytest.raises(UsageError, match=message):
    input_pipeline.load(_config(dataset=dataset))


@pytest.mark.parametrize('overrides,message', [
    (dict(encoder='conv1d'), 'conv1d is for realdisp'),
    (dict(dataset='realdisp', encoder='simp'), 'need --config.encoder=conv1d'),
    (dict(dataset='vectors:x.npz', encoder='simp'), 'vectors need --config.encoder=mlp'),
    (dict(dataset='vectors:x.npz', protocol='holdout'), 'no test split'),
    (dict(covariance='full'), '--config.covariance'),
    (dict(probe_every=-1), 'probe_every must be >= 0'),
])
def test_bad_combinations(overrides, message):
  with pytest.raises(UsageError, match=message):
    configuration.validate(_config(**overrides))


def test_imbalance_needs_one_cluster_per_class():
  with pytest.raises(UsageError, match='--config.num_clusters=10'):
    input_pipeline.load(_config(imbalance=1, num_clusters=12))


def test_train_feed_gives_each_process_its_slice_of_the_permutation():
  """The global batch of step s of an epoch is row s of the epoch's permutation, whatever the number
  of processes and the step resumed from, and the inputs are the split's rows."""
  n, batch = 103, 8
  split = sources.Split(np.arange(2 * n, dtype=np.uint8).reshape(n, 2),
                        np.arange(n, dtype=np.int64) * 10)
  for seed, epoch, start in ((0, 1, 0), (3, 2, 4)):
    perm = pipeline.epoch_permutation(n, seed, epoch)[:n // batch * batch].reshape(-1, batch)
    for count in (1, 2, 4):
      epochs = [list(pipeline.TrainFeed(split, batch, seed, i, count).epoch(epoch, start))
                for i in range(count)]
      assert all(len(e) == n // batch - start for e in epochs)
      for step, global_rows in enumerate(perm[start:]):
        labels = np.concatenate([e[step]['label'] for e in epochs])
        images = np.concatenate([e[step]['image'] for e in epochs])
        np.testing.assert_array_equal(labels, global_rows * 10)
        np.testing.assert_array_equal(images, split.images[global_rows])
        assert images.dtype == np.uint8 and labels.dtype == np.int64
  unfinished = pipeline.TrainFeed(split, batch, 0).epoch(1)
  next(unfinished)
  unfinished.close()  # Leaving an epoch early (an interrupted run) stops the prefetching.


def test_pad_rows_appends_zero_rows_and_marks_the_real_ones():
  padded, real = pipeline.pad_rows(np.full((3, 2), 7, np.uint8), 5)
  assert padded.dtype == np.uint8 and padded.shape == (5, 2)
  np.testing.assert_array_equal(padded[:, 0], [7, 7, 7, 0, 0])
  np.testing.assert_array_equal(real, [True, True, True, False, False])
  full, real = pipeline.pad_rows(np.ones((5, 2)), 5)
  assert full.shape == (5, 2) and real.all()


def test_array_files_hold_x_y_and_ids(tmp_path):
  np.savez(tmp_path / 'a.npz', x=np.zeros((3, 2)), y=np.arange(3), ids=np.array(['a', 'b', 'c']))
  x, y, ids = readers.read_arrays(str(tmp_path / 'a.npz'), labels=True)
  assert x.shape == (3, 2) and y.tolist() == [0, 1, 2] and ids.tolist() == ['a', 'b', 'c']
  x, y, ids = readers.read_arrays(str(tmp_path / 'a.npz'), labels=False)
  assert y is None and ids.tolist() == ['a', 'b', 'c']
  np.savez(tmp_path / 'images.npz', images=np.zeros((3, 2)))
  with pytest.raises(UsageError, match=r'holds the arrays images; an array file holds x \(inputs\)'):
    readers.read_arrays(str(tmp_path / 'images.npz'), labels=False)
  np.savez(tmp_path / 'unlabelled.npz', x=np.zeros((3, 2)))
  with pytest.raises(UsageError, match=r'numpy.savez\(FILE, x=..., y=...\)'):
    readers.read_arrays(str(tmp_path / 'unlabelled.npz'), labels=True)
