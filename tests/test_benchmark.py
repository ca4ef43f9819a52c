"""The benchmark suites run end to end and save the figures they print (no timing is asserted)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # Every test starts a benchmark process.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, *flags):
  out = tmp_path / 'figures.json'
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # One CPU device, as a user's run would have.
  proc = subprocess.run([sys.executable, '-m', 'ohc_jax.benchmark', f'--out={out}', *flags],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout, json.loads(out.read_text())


def test_assign_suite(tmp_path):
  stdout, figures = _run(tmp_path, '--suite=assign', '--assign_batch_sizes=64',
                         '--assign_num_clusters=3,10', '--repeats=1', '--staircase_sizes=40x3',
                         '--table_epochs=2')
  rows = figures['rows']
  assert [(r['batch_size'], r['num_clusters']) for r in rows] == [(64, 3), (64, 10)]
  for row in rows:
    assert row['sequential_steps'] == 64 and 1 <= row['parallel_rounds'] <= 64
    assert row['sequential_ms'] > 0 and row['parallel_ms'] > 0
    assert f'{row["parallel_rounds"]:7d}' in stdout
  assert figures['backend'] == 'cpu' and figures['suite'] == 'assign'
  worst, = figures['worst_case']
  # One pair a round: the rounds alone take B; the hand-over keeps the loop at B iterations too.
  assert worst['rounds_without_handover'] == 40 and worst['parallel_iterations'] == 40
  stages = {row['stage']: row for row in figures['training_tables']}
  assert list(stages) == ['init', 'epoch 1', 'epoch 2']  # The digits: 1,797 points, B = 128.
  assert stages['init']['tables'] == 1 and stages['epoch 1']['tables'] == 1797 // 128
  for row in stages.values():
    assert 1 <= row['rounds_median'] <= row['rounds_max'] <= 128


def test_train_suite_reports_the_assignment_share(tmp_path):
  stdout, figures = _run(tmp_path, '--suite=train', '--train_cases=simp:32:32,resnet18:64:2',
                         '--compute_dtypes=float32,bfloat16', '--steps=2', '--repeats=1')
  rows = figures['rows']
  assert [(r['encoder'], r['image_size'], r['batch_size'], r['compute_dtype']) for r in rows] == [
      ('simp', 32, 32, 'float32'), ('simp', 32, 32, 'bfloat16'),
      ('resnet18', 64, 2, 'float32'), ('resnet18', 64, 2, 'bfloat16')]
  for row in rows:
    assert row['combination_images_per_s'] > 0 and row['argmin_images_per_s'] > 0
    assert row['forward_ms'] > 0 and row['conv_impl'] == 'auto'
    step_ms = 1e3 * row['batch_size'] / row['combination_images_per_s']
    assert abs(row['assignment_share_of_step'] - row['assignment_ms_per_batch'] / step_ms) < 1e-9
    assert row['peak_device_memory_mb'] is None  # XLA:CPU does not report it.
  assert stdout.count('% of a') == 4 and 'resnet18 encoder, bfloat16, 64x64x3' in stdout


def test_train_suite_names_a_bad_case(tmp_path):
  out = tmp_path / 'figures.json'
  proc = subprocess.run([sys.executable, '-m', 'ohc_jax.benchmark', f'--out={out}',
                         '--train_cases=simp:32'], cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 2 and 'ENCODER:IMAGE_SIZE:BATCH' in proc.stderr and not out.exists()
  assert 'Traceback' not in proc.stderr


_TINY_CIFAR10 = '''
import sys, numpy as np, tensorflow as tf, tensorflow_datasets as tfds
rng = np.random.default_rng(0)
def split(n):  # The features of tfds's cifar10, which reads the files.
  return tf.data.Dataset.from_tensor_slices({
      'id': [str(i) for i in range(n)], 'image': rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
      'label': rng.integers(0, 10, n)})
tfds.dataset_builders.TfDataBuilder(
    name='cifar10', version='3.0.2', split_datasets={'train': split(320), 'test': split(64)},
    features=tfds.features.FeaturesDict({'id': tfds.features.Text(),
                                         'image': tfds.features.Image(shape=(32, 32, 3)),
                                         'label': tfds.features.ClassLabel(num_classes=10)}),
    data_dir=sys.argv[1]).download_and_prepare()
'''


def test_input_suite_on_tiny_sets(tmp_path, monkeypatch):
  monkeypatch.setenv('OHC_JAX_CACHE', str(tmp_path / 'cache'))
  subprocess.run([sys.executable, '-c', _TINY_CIFAR10, str(tmp_path / 'tfds')], check=True,
                 capture_output=True)
  stream, raw, synthetic = tmp_path / 'stream', tmp_path / 'raw', tmp_path / 'synthetic'
  for where, num, encoding in ((stream, 320, 'png'), (raw, 320, 'raw'), (synthetic, 640, 'png')):
    subprocess.run([sys.executable, os.path.join(REPO, 'launch', 'make_synthetic_images.py'),
                    f'--out={where}', f'--num={num}', f'--encoding={encoding}'], check=True,
                   capture_output=True)
  stdout, figures = _run(tmp_path, '--suite=input', '--batch_size=64', '--steps=2', '--warmup=1',
                         '--repeats=2',
                         f'--data_dir={tmp_path / "tfds"}', f'--stream_dir={stream}',
                         f'--stream_raw_dir={raw}', f'--synthetic_dir={synthetic}')
  rows, ratios = figures['rows'], figures['ratios']
  assert list(rows) == ['cifar10_memory', 'cifar10_stream', 'cifar10_stream_normal_priority',
                        'cifar10_stream_png_records', 'cifar10_stream_raw_records',
                        'synthetic_1.2M_stream']
  assert [rows[r]['steps_per_epoch'] for r in rows] == [5, 5, 5, 5, 5, 10]
  assert all(len(row['images_per_s_runs']) == 2 for row in rows.values())
  assert rows['cifar10_stream']['images_per_s'] == pytest.approx(
      np.median(rows['cifar10_stream']['images_per_s_runs']))
  assert ratios['cifar10_stream_raw_records_over_memory_images_per_s'] == pytest.approx(
      rows['cifar10_stream_raw_records']['images_per_s'] / rows['cifar10_memory']['images_per_s'])
  assert 'first_batch_at_90%_s' in rows['synthetic_1.2M_stream']
  assert 'first_batch_at_10%_s' not in rows['cifar10_memory']
  assert ratios['cifar10_stream_over_memory_images_per_s'] == pytest.approx(
      rows['cifar10_stream']['images_per_s'] / rows['cifar10_memory']['images_per_s'])
  assert ratios['synthetic_over_cifar10_stream_peak_rss'] == pytest.approx(
      rows['synthetic_1.2M_stream']['peak_rss_mb'] / rows['cifar10_stream']['peak_rss_mb'])
  assert 'cifar10_stream / memory images/s' in stdout


def test_input_suite_names_a_missing_folder(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'ohc_jax.benchmark', '--suite=input',
                         f'--data_dir={tmp_path}', f'--stream_dir={tmp_path / "none"}',
                         f'--out={tmp_path / "f.json"}'],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert f'no folder {tmp_path / "none"}: give --data_dir' in proc.stderr.strip().splitlines()[-1]
