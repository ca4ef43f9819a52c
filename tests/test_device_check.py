"""launch/device_check.sh --smoke: every step of the device check end to end on the CPU, with
TensorFlow, tfds and tensorboardX made unimportable (the device image lacks them)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_device_check_smoke_writes_its_figures_without_tensorflow(tmp_path):
  poison = tmp_path / 'poison'
  for module in ('tensorflow', 'tensorflow_datasets', 'tensorboardX'):
    (poison / module).mkdir(parents=True)
    (poison / module / '__init__.py').write_text(
        f'raise ImportError("the device image has no {module}")\n')
  out = tmp_path / 'out'
  env = dict(os.environ, OUT=str(out), PYTHON=sys.executable,
             PYTHONPATH=f'{poison}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
  env.pop('XLA_FLAGS', None)  # One CPU device, as on a one-GPU machine.
  proc = subprocess.run(['bash', 'launch/device_check.sh', '--smoke'], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  names = sorted(os.listdir(out))
  assert names == ['assign.json', 'e2e_results.json', 'e2e_timing.json', 'env.json',
                   'profile.json', 'summary.md', 'train.json']
  load = lambda name: json.loads((out / name).read_text())
  environment = load('env.json')
  assert environment['backend'] == 'cpu' and environment['versions']['jax']
  train = load('train.json')
  assert {(r['encoder'], r['compute_dtype']) for r in train['rows']} == {
      ('simp', 'float32'), ('simp', 'bfloat16'), ('resnet18', 'float32'),
      ('resnet18', 'bfloat16')}
  assert all(r['combination_images_per_s'] > 0 for r in train['rows'])
  assign = load('assign.json')
  assert assign['rows'] and assign['worst_case'] and assign['training_tables']
  results = load('e2e_results.json')
  assert results['final']['epoch'] == 2 and results['dataset'].startswith('folder:')
  assert load('e2e_timing.json')['wall_s'] > 0
  profile = load('profile.json')
  assert profile['total_ms'] > 0 and profile['top']
  summary = (out / 'summary.md').read_text()
  for heading in ('# Device check', '## Train suite', '## Assign suite', '## End to end',
                  '## Profile'):
    assert heading in summary


def test_device_check_refuses_an_unknown_argument():
  proc = subprocess.run(['bash', 'launch/device_check.sh', '--full'], cwd=REPO,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2 and proc.stderr.startswith('error: unknown argument --full')
