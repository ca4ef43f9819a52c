"""Faults and bad input of configs, predict and report (issue 24, items 4, 7, 8, 11, 12, 13): each
ends in one `error:` line naming the fix, exit code 2, no traceback and nothing left behind. The
table runs each command line in-process; the cases that need a process of their own or a trained
model are marked slow."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ohc_jax import cli, configuration, main, memory, predict, report, sharding
from ohc_jax.configuration import CONFIG_DIR
from ohc_jax.errors import UsageError
from ohc_jax.run import evaluation

REPO = os.path.dirname(CONFIG_DIR)


def _main(argv):
  return cli.run(main.train, main.parse_flags, ['main.py', *argv])


TOOLS = {'main': _main, 'predict': predict.run, 'report': report.run}

# (tool, arguments, fragments of the error line); main runs with --workdir={W}. {W}: a fresh
# workdir (it must not be created); {run}: a finished run's workdir with checkpoints of steps 14 and 28 whose files are
# gone; {x}: a .npy of inputs; {out}: a fresh folder.
CASES = [
    ('main', ['--config.sigma=3e38'], ['underflow', '--config.sigma= between']),
    ('main', ['--config.sigma=1e-38'], ['overflow', '--config.sigma= between']),
    ('main', ['--config.hidden_dim=1000000000'], ['this host', '--config.hidden_dim=']),
    ('main', ['--config.latent_dim=1000000000'], ['this host', '--config.latent_dim=']),
    ('main', ['--config.num_clusters=100000000'], ['this host', '--config.num_clusters=']),
    ('main', ['--config.eval_batch_size=10000000000'], ['this host', '--config.eval_batch_size=']),
    ('main', ['--config=cifar10', '--config.image_size=1000000'],
     ['this host', '--config.image_size=']),
    ('main', ['--config=cifar10', '--config.encoder=mlp', '--config.hidden_dim=10000000',
              '--config.image_size=100'], ['this host', '--config.hidden_dim=']),
    ('predict', ['--workdir={run}', '--input={x}', '--output=/proc/p.csv'],
     ['cannot write --output=/proc/p.csv', 'a folder you can write']),
    ('report', ['{run}', '--out=/proc/plots'], ['cannot write the plots into /proc/plots', '--out']),
    ('report', ['{run}', '--out={x}/plots'], ['cannot write the plots', '--out']),
    ('predict', ['--workdir={run}', '--input={x}', '--output={out}/p.csv', '--step=5'],
     ['no checkpoint of step 5', 'it has steps 14, 28', '--step']),
    ('report', ['{run}', '--step=5'], ['no checkpoint of step 5', 'it has steps 14, 28', '--step']),
    ('predict', ['--workdir={run}', '--input={x}', '--output={out}/p.csv', '--step=14'],
     ['step 14', 'pass another of its steps (28) to --step']),
    ('report', ['{run}'], ['no checkpoint', 'steps 14, 28', 'nothing was changed',
                           'another --workdir']),
    ('predict', ['--workdir={run}', '--input=tfds:cifar10', '--output={out}/p.csv'],
     ['tfds:NAME:SPLIT', 'tfds:cifar10:test[:64]']),
]


@pytest.fixture
def paths(tmp_path):
  run = tmp_path / 'run'
  for step in (14, 28):
    (run / 'checkpoints' / str(step)).mkdir(parents=True)
  (run / 'results.json').write_text('{"finished": true}')
  np.save(tmp_path / 'x.npy', np.zeros((4, 8, 8), np.uint8))
  (tmp_path / 'out').mkdir()
  return {'W': str(tmp_path / 'W'), 'run': str(run), 'x': str(tmp_path / 'x.npy'),
          'out': str(tmp_path / 'out')}


def _files(root):
  return sorted(os.path.join(d, f) for d, dirs, files in os.walk(root) for f in files + dirs)


def _one_error_line(err: str) -> str:
  assert 'Traceback' not in err, err
  errors = [line for line in err.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1, err
  assert err.strip().splitlines()[-1] == errors[0]
  return errors[0]


@pytest.mark.parametrize('tool,args,fragments', CASES,
                         ids=[f'{t}:{" ".join(a)}' for t, a, _ in CASES])
def test_fault_gives_one_line_and_leaves_nothing(tool, args, fragments, paths, tmp_path, capsys):
  before = _files(tmp_path)
  workdir = ['--workdir={W}'] if tool == 'main' else []
  code = TOOLS[tool]([a.format(**paths) for a in workdir + args])
  line = _one_error_line(capsys.readouterr().err)
  assert code == 2, line
  for fragment in fragments:
    assert fragment in line, (fragment, line)
  assert '--overwrite' not in line  # Advice that would wipe the finished run.
  assert _files(tmp_path) == before  # No workdir, output, plots folder or temporary file.


def test_every_config_of_configs_passes_the_memory_estimate():
  """No config shipped is refused on a 24 GB host (by the estimate of a lower bound, each needs
  well under 1 GB)."""
  for name in configuration.config_names():
    config = configuration.from_file(configuration.config_path(name))
    configuration.validate(config)
    assert sum(n.bytes for n in memory.needs(config)) < 2**30, name
    memory.refuse_if_too_big(config, 24 * 10**9, 'a 24 GB host')


def test_the_estimate_counts_what_a_run_must_hold():
  config = configuration.from_file(configuration.config_path('default'))  # mlp on 8x8 digits.
  found = {n.what.split(' ')[1]: n.bytes for n in memory.needs(config)}
  k, nz, h = 10, 32, 256
  assert found['centroids'] == 4 * k * nz * 4
  assert found['mlp'] == 4 * h * (1 + nz + 2) * 4  # The input counted as 1 value: a lower bound.
  assert found['training'] == 128 * (1 + h + nz + k) * 4
  assert found['evaluation'] == 1024 * (1 + h + nz + 2 * k) * 4
  halves = {n.what.split(' ')[1]: n.bytes for n in memory.needs(config, processes=2)}
  assert halves['training'] == found['training'] // 2
  assert halves['centroids'] == found['centroids']  # Every process holds the state.


def test_a_device_too_small_is_refused_naming_the_field(monkeypatch):
  config = configuration.from_file(configuration.config_path('default'))
  config.num_devices = 2
  assert sharding.make_mesh(config).size == 2  # The CPU: its memory is the host's, checked before.
  need = sum(n.bytes for n in memory.needs(config, devices=2))
  monkeypatch.setattr(sharding, 'device_memory', lambda device: need - 1)
  with pytest.raises(UsageError, match=r'each CPU device.*--config.eval_batch_size='):
    sharding.make_mesh(config)
  monkeypatch.setattr(sharding, 'device_memory', lambda device: need)
  assert sharding.make_mesh(config).size == 2


@pytest.mark.parametrize('sigma', [3e38, 1e-38, 1e30, 1e-31])
def test_sigmas_whose_costs_leave_float32_are_refused(sigma):
  low, high = configuration.sigma_range()
  distances = np.array(configuration.SQUARED_DISTANCES, np.float32)
  with np.errstate(over='ignore', under='ignore'):
    costs = distances / np.float32(sigma)
  tiny = np.finfo(np.float32).tiny
  assert not np.all(np.isfinite(costs) & (costs >= tiny))  # Out of range: overflow or underflow.
  for bound in (low, high):
    costs = distances / np.float32(bound)
    assert np.all(np.isfinite(costs) & (costs >= tiny * 0.999))  # The bounds themselves fit.
  config = configuration.from_file(configuration.config_path('default'))
  config.sigma = sigma
  with pytest.raises(UsageError, match='--config.sigma= between'):
    configuration.validate(config)


def test_collapse_warning_only_for_one_cluster(digits_config):
  assert evaluation.collapse_warning({'num_nonempty': 2, 'step': 5}, digits_config) is None
  warning = evaluation.collapse_warning({'num_nonempty': 1, 'step': 5}, digits_config)
  assert 'one of its 10 clusters' in warning and '--config.sigma' in warning


@pytest.mark.parametrize('spec,name,split', [
    ('tfds:cifar10:test', 'cifar10', 'test'),
    ('tfds:cifar10:test[:64]', 'cifar10', 'test[:64]'),
    ('tfds:cifar10:3.0.2:test[:64]', 'cifar10:3.0.2', 'test[:64]'),
    ('tfds:imagenette/160px:1.*.*:validation[10%:20%]', 'imagenette/160px:1.*.*',
     'validation[10%:20%]'),
    ('tfds:mnist:train[:10]+test[-10:]', 'mnist', 'train[:10]+test[-10:]'),
])
def test_tfds_split_specs_keep_their_colons(spec, name, split):
  assert predict.tfds_name_and_split(spec) == (name, split)


def _subprocess(*args):
  """A program as a user runs it, outside any cluster (no SLURM_ variables)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_') and k != 'XLA_FLAGS'}
  env['PYTHONPATH'] = REPO
  return subprocess.run([sys.executable, '-m', *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize('args,fragments', [
    (['--config.distributed=True'], ['--config.coordinator_address=HOST:PORT', 'launch/slurm.sh']),
    (['--config.eval_batch_size=10000000000'], ['--config.eval_batch_size=']),
])
def test_as_a_program(args, fragments, tmp_path):
  """As a user runs it (jax.distributed.initialize needs a process whose backend has not
  started)."""
  proc = _subprocess('ohc_jax.main', f'--workdir={tmp_path / "W"}', *args)
  line = _one_error_line(proc.stderr)
  assert proc.returncode == 2 and not proc.stdout
  for fragment in fragments:
    assert fragment in line
  assert not (tmp_path / 'W').exists()


@pytest.mark.slow
def test_a_run_that_collapses_says_so(digits_config, tmp_path, monkeypatch, capsys):
  """The issue's sigma=3e38 with its validation bypassed: costs all 0, every point in cluster 0."""
  from ohc_jax.run import train
  monkeypatch.setattr(configuration, '_check_sigma_in_float32', lambda sigma: None)
  digits_config.update(sigma=3e38, num_epochs=1)
  results = train.train_and_evaluate(digits_config, str(tmp_path))
  assert results['final']['num_nonempty'] == 1
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert len(saved['warnings']) == 1 and 'collapsed' in saved['warnings'][0]
  assert f'warning: {saved["warnings"][0]}' in capsys.readouterr().err


@pytest.mark.slow
def test_predict_reads_a_sliced_tfds_split(tmp_path):
  """tfds:NAME:SPLIT with a slice reaches tfds whole (it was cut at the slice's colon, and the
  name 'cifar10:test[' blamed on --data_dir); the model of a mock cifar10 run. mock_data gives
  every split its num_examples, slice or not."""
  import tensorflow_datasets as tfds
  from ohc_jax.run import train
  config = configuration.from_file(configuration.config_path('cifar10'))
  config.update(batch_size=32, eval_batch_size=32, num_epochs=1, progress_bar=False,
                plots_every_epochs=0)
  out = tmp_path / 'labels.csv'
  with tfds.testing.mock_data(num_examples=32):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
    code = predict.run([f'--workdir={tmp_path / "run"}', '--input=tfds:cifar10:test[:16]',
                        f'--output={out}'])
  assert code == 0 and len(out.read_text().splitlines()) == 1 + 32
