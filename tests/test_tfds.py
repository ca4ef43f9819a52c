"""The tfds path, under tfds.testing.mock_data (no real data needed)."""

import json

import pytest
import tensorflow_datasets as tfds

from ohc_jax import configuration, train

pytestmark = pytest.mark.slow  # Trains on mock CIFAR-10.


def test_cifar10_runs_under_mock_data(tmp_path):
  config = configuration.from_file(f'{configuration.CONFIG_DIR}/cifar10.py')
  config.batch_size = 64
  config.eval_batch_size = 64
  config.num_epochs = 1
  config.progress_bar = False
  config.protocol = 'holdout'
  with tfds.testing.mock_data(num_examples=192):
    results = train.train_and_evaluate(config, str(tmp_path))
  assert results['num_train'] == 192 and results['num_eval'] == 192
  record = json.loads((tmp_path / 'metrics.jsonl').read_text())
  assert record['step'] == 3
  assert sum(record['hard_sizes']) == 192
