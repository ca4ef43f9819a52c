"""The command line as a user runs it: bad input gives one line naming the fix and exit code 2."""

import os
import subprocess
import sys

import pytest

from ohc_jax.configuration import CONFIG_DIR

REPO = os.path.dirname(CONFIG_DIR)


def run_main(*args, env=None):
  env = dict(os.environ, **(env or {}))
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', 'ohc_jax.main', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def assert_usage_error(proc, *fragments):
  assert proc.returncode == 2, proc.stderr
  assert 'Traceback' not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ')
  for fragment in fragments:
    assert fragment in last


@pytest.mark.parametrize('override,fragments', [
    ('--config.dataset=imagenet9', ('unknown dataset', '--config.dataset')),
    ('--config.encoder=vgg', ('unknown encoder', '--config.encoder')),
    ('--config.num_clusters=1', ('num_clusters must be >= 2',)),
    ('--config.sigma=0', ('sigma must be > 0',)),
    ('--config.learning_rate=-0.1', ('learning_rate must be > 0',)),
    ('--config.batch_size=0', ('batch_size must be >= 1',)),
])
def test_bad_config_values(tmp_path, override, fragments):
  proc = run_main(f'--workdir={tmp_path / "run"}', override)
  assert_usage_error(proc, *fragments)
  assert not (tmp_path / 'run').exists()


def test_tfds_data_set_not_prepared(tmp_path):
  proc = run_main(f'--workdir={tmp_path / "run"}', f'--config={CONFIG_DIR}/mnist.py',
                  f'--config.data_dir={tmp_path / "empty"}')
  assert_usage_error(proc, 'not prepared', '--config.data_dir', '--config.download=True')


def test_finished_workdir_is_kept(tmp_path):
  (tmp_path / 'results.json').write_text('{"kept": true}')
  proc = run_main(f'--workdir={tmp_path}')
  assert_usage_error(proc, '--overwrite')
  assert (tmp_path / 'results.json').read_text() == '{"kept": true}'
