r"""Collates a sweep's runs into DIR/table.md and DIR/table.csv (mean +- std over seeds).

  python launch/collate.py runs/sweep

One row per (data set, method, imbalance, protocol); the figures of the final epoch and of the best-NMI
epoch side by side. std is the sample standard deviation (ddof=1; 0 for a single seed). A run counts as
collapsed when it uses fewer than half the clusters or its KL* exceeds half of log K.
"""

import csv
import glob
import json
import math
import os
import sys

import numpy as np

METRICS = ('acc', 'nmi', 'ari', 'kl_star', 'num_nonempty')


def collapsed(record: dict, num_clusters: int) -> bool:
  return (record['num_nonempty'] < num_clusters / 2
          or record['kl_star'] > 0.5 * math.log(num_clusters))


def load_runs(directory: str) -> list[dict]:
  """Every finished run below `directory`: its config and results."""
  found = []
  for path in sorted(glob.glob(os.path.join(directory, '**', 'results.json'), recursive=True)):
    run_dir = os.path.dirname(path)
    with open(path) as f:
      results = json.load(f)
    with open(os.path.join(run_dir, 'config.json')) as f:
      config = json.load(f)
    found.append({'dir': run_dir, 'config': config, 'results': results})
  return found


def _mean_std(values):
  values = np.asarray(values, np.float64)
  std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
  return float(values.mean()), std


def collate(found: list[dict]) -> list[dict]:
  """One row per (dataset, method, imbalance, protocol) with mean and std of every figure."""
  groups = {}
  for run in found:
    c = run['config']
    key = (c['dataset'], c['method'], c.get('imbalance', 0), c['protocol'])
    groups.setdefault(key, []).append(run)
  rows = []
  for (dataset, method, imbalance, protocol), group in sorted(groups.items(), key=str):
    row = {'dataset': dataset, 'method': method, 'imbalance': imbalance, 'protocol': protocol,
           'seeds': len(group)}
    for which in ('final', 'best_nmi'):
      records = [run['results'][which] for run in group]
      # Probes run only at some epochs, so a best-NMI epoch may lack them: columns all seeds have.
      probed = set.intersection(*({k for k in r if 'probe' in k} for r in records))
      names = list(METRICS) + sorted(probed)
      for name in names:
        row[f'{which}_{name}'] = _mean_std([r[name] for r in records])
      row[f'{which}_epoch'] = _mean_std([r['epoch'] for r in records])
    num_clusters = group[0]['config']['num_clusters']
    flags = [collapsed(run['results']['final'], num_clusters) for run in group]
    row['collapsed'] = f'{sum(flags)}/{len(flags)}'
    rows.append(row)
  return rows


def _fmt(value) -> str:
  if isinstance(value, tuple):
    return f'{value[0]:.3f} ± {value[1]:.3f}'
  return str(value)


def write_tables(rows: list[dict], directory: str) -> None:
  columns = list(dict.fromkeys(k for row in rows for k in row))
  with open(os.path.join(directory, 'table.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    header = []
    for col in columns:
      header += [f'{col}_mean', f'{col}_std'] if isinstance(rows[0].get(col), tuple) else [col]
    writer.writerow(header)
    for row in rows:
      line = []
      for col in columns:
        value = row.get(col, '')
        line += list(value) if isinstance(value, tuple) else [value]
      writer.writerow(line)
  with open(os.path.join(directory, 'table.md'), 'w') as f:
    f.write('| ' + ' | '.join(columns) + ' |\n')
    f.write('|' + '---|' * len(columns) + '\n')
    for row in rows:
      f.write('| ' + ' | '.join(_fmt(row.get(col, '')) for col in columns) + ' |\n')


def main(argv):
  if len(argv) != 2 or not os.path.isdir(argv[1]):
    sys.exit('usage: python launch/collate.py SWEEP_DIR (a directory of finished runs)')
  found = load_runs(argv[1])
  if not found:
    sys.exit(f'error: no finished run (results.json) below {argv[1]}: run launch/sweep.py first')
  rows = collate(found)
  write_tables(rows, argv[1])
  with open(os.path.join(argv[1], 'table.md')) as f:
    print(f.read(), end='')


if __name__ == '__main__':
  main(sys.argv)
