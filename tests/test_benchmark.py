"""The benchmark suites run end to end and save the figures they print (no timing is asserted)."""

import json
import os
import subprocess
import sys

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
  stdout, figures = _run(tmp_path, '--suite=train', '--batch_size=32', '--steps=2', '--repeats=1')
  assert figures['combination_images_per_s'] > 0 and figures['argmin_images_per_s'] > 0
  step_ms = 1e3 * 32 / figures['combination_images_per_s']
  assert abs(figures['assignment_share_of_step']
             - figures['assignment_ms_per_batch'] / step_ms) < 1e-9
  assert '% of a' in stdout
