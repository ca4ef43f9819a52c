"""launch/sweep.py and launch/collate.py on short real runs."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from ohc_jax.run import train
from ohc_jax.configuration import CONFIG_DIR

REPO = os.path.dirname(CONFIG_DIR)
sys.path.insert(0, os.path.join(REPO, 'launch'))
import collate  # noqa: E402


def _sweep(*args):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, 'launch/sweep.py', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def test_emit_prints_one_command_per_run_and_skips_finished(tmp_path):
  args = [f'--workdir={tmp_path}', '--methods=combination,none', '--seeds=2',
          '--imbalance=0,1', '--emit']
  lines = _sweep(*args).stdout.splitlines()
  assert len(lines) == 2 * 2 * 2
  assert all('ohc_jax.main' in line for line in lines)
  assert sum('--config.method=none' in line for line in lines) == 4
  assert sum('--config.imbalance=1' in line for line in lines) == 4
  finished = tmp_path / 'none_imb1_paper_seed1'
  finished.mkdir()
  (finished / 'results.json').write_text('{}')
  again = _sweep(*args).stdout.splitlines()
  assert len(again) == 7 and not any(str(finished) + ' ' in line for line in again)


@pytest.fixture(scope='module')
def sweep_dir(tmp_path_factory):
  """Two seeds of combination and of none on digits, 2 epochs each, run in-process."""
  from ohc_jax import configuration
  root = tmp_path_factory.mktemp('sweep')
  for method in ('combination', 'none'):
    for seed in range(2):
      c = configuration.from_file(os.path.join(CONFIG_DIR, 'default.py'))
      c.update(method=method, seed=seed, num_epochs=2, progress_bar=False)
      train.train_and_evaluate(c, str(root / f'{method}_seed{seed}'))
  return root


@pytest.mark.slow
def test_collate_means_stds_and_collapse_flag(sweep_dir):
  rows = {row['method']: row for row in collate.collate(collate.load_runs(str(sweep_dir)))}
  assert set(rows) == {'combination', 'none'}
  for method, row in rows.items():
    finals = [json.loads((sweep_dir / f'{method}_seed{s}' / 'results.json').read_text())['final']
              for s in range(2)]
    accs = [f['acc'] for f in finals]
    mean, std = row['final_acc']
    assert mean == pytest.approx(sum(accs) / 2)
    assert std == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
    flags = sum(f['num_nonempty'] < 5 or f['kl_star'] > 0.5 * math.log(10) for f in finals)
    assert row['collapsed'] == f'{flags}/2'
  assert rows['combination']['collapsed'] == '0/2'
  assert rows['none']['final_num_nonempty'][0] < rows['combination']['final_num_nonempty'][0]


def test_collate_keeps_only_probe_columns_every_seed_has():
  def run(seed, best_probe):
    record = dict.fromkeys(collate.METRICS, float(seed))
    best = {**record, 'epoch': 3 + seed, **({'knn_probe_acc': 0.5} if best_probe else {})}
    return {'dir': f'run{seed}', 'config': {'dataset': 'digits', 'method': 'combination',
                                            'protocol': 'paper', 'num_clusters': 10},
            'results': {'final': {**record, 'epoch': 10, 'knn_probe_acc': 0.25 * (seed + 1)},
                        'best_nmi': best}}
  [row] = collate.collate([run(0, True), run(1, False)])
  assert row['final_knn_probe_acc'] == (pytest.approx(0.375), pytest.approx(0.25 / math.sqrt(2)))
  assert 'best_nmi_knn_probe_acc' not in row and row['best_nmi_epoch'][0] == 3.5


@pytest.mark.slow
def test_collate_writes_tables(sweep_dir):
  out = subprocess.run([sys.executable, 'launch/collate.py', str(sweep_dir)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  table = (sweep_dir / 'table.md').read_text().splitlines()
  assert len(table) == 2 + 2 and 'final_acc' in table[0] and 'best_nmi_acc' in table[0]
  with open(sweep_dir / 'table.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['method'] for r in rows] == ['combination', 'none']
  assert float(rows[0]['final_acc_mean']) > 0
