"""Plots: made at the end of epochs by training, and by `python -m ohc_jax.report DIR`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ohc_jax import configuration, report
from ohc_jax.run import plots, train
from ohc_jax.configuration import CONFIG_DIR

REPO = os.path.dirname(CONFIG_DIR)
NAMES = ('cluster_sizes', 'confusion', 'metrics', 'embedding', 'examples')


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """Digits, 2 epochs, plots at the end of epoch 2 only."""
  c = configuration.from_file(os.path.join(CONFIG_DIR, 'default.py'))
  c.update(num_epochs=2, progress_bar=False, plots_every_epochs=2)
  workdir = tmp_path_factory.mktemp('report') / 'run'
  train.train_and_evaluate(c, str(workdir))
  return workdir


def _check_pngs(directory):
  assert sorted(os.listdir(directory)) == sorted(f'{n}.png' for n in NAMES)
  for name in NAMES:
    with Image.open(os.path.join(directory, f'{name}.png')) as image:
      assert image.format == 'PNG'
      assert image.size == plots.pixel_size(name)
      pixels = np.asarray(image.convert('L'), np.float64)
    assert pixels.std() > 5, name  # Something is drawn, not a blank canvas.
    assert (pixels < 128).mean() > 0.005, name


@pytest.mark.slow
def test_training_makes_every_plot_at_the_end_of_epochs(finished):
  _check_pngs(finished / 'plots')


@pytest.mark.slow
def test_report_command_makes_every_plot_from_a_finished_workdir(finished, tmp_path):
  out = tmp_path / 'plots'
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, '-m', 'ohc_jax.report', str(finished), f'--out={out}'],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert len(proc.stdout.split()) == len(NAMES)
  _check_pngs(out)


def test_report_bad_workdirs(tmp_path, capsys):
  assert report.run([str(tmp_path / 'missing')]) == 2
  assert capsys.readouterr().err.strip() == (
      f'error: {tmp_path / "missing"} does not exist: name the workdir of a training run')
  (tmp_path / 'empty').mkdir()
  assert report.run([str(tmp_path / 'empty')]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and 'holds no checkpoint' in err and '\n' not in err
  assert not (tmp_path / 'empty' / 'plots').exists()


def test_hungarian_order_puts_each_cluster_on_its_class():
  table = np.array([[0, 9, 1], [8, 0, 0], [1, 0, 7], [0, 2, 0]])
  assert plots.hungarian_order(table).tolist() == [1, 0, 2, 3]


@pytest.mark.slow
def test_tensorboard_events_and_step_logs(finished):
  import tensorflow as tf
  tags = {}
  for name in os.listdir(finished / 'tensorboard'):
    for event in tf.compat.v1.train.summary_iterator(str(finished / 'tensorboard' / name)):
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append(event.step)
  assert tags['eval/nmi'] == [14, 28] and tags['epoch/train_loss'] == [14, 28]
  assert tags['train/loss'] == list(range(5, 29, 5))  # log_every_steps=5 in default.py.
  logged = [json.loads(line) for line in (finished / 'steps.jsonl').read_text().splitlines()]
  assert [r['step'] for r in logged] == tags['train/loss']
  assert all(r['images_per_s'] > 0 and np.isfinite(r['loss']) for r in logged)
