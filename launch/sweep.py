r"""Runs every (method, imbalance, protocol, seed) combination of a config, skipping finished runs.

  python launch/sweep.py --config=configs/cifar10.py --workdir=runs/sweep \
      --methods=combination,none,sinkhorn,entropy,variance,ckm,coke,neural_gas --seeds=3 \
      --set=data_dir=../shared/data/tfds
  python launch/sweep.py ... --emit     # print one command per unfinished run (for a scheduler)
  python launch/collate.py runs/sweep   # then: runs/sweep/table.md and table.csv
"""

import itertools
import os
import shlex
import subprocess
import sys

from absl import app, flags

_CONFIG = flags.DEFINE_string('config', 'configs/default.py', 'Config file of every run.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Parent directory: one sub-directory per run.')
_METHODS = flags.DEFINE_list('methods', ['combination'], 'Values of config.method.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds 0 .. seeds-1.')
_IMBALANCE = flags.DEFINE_list('imbalance', ['0'], 'Values of config.imbalance.')
_PROTOCOLS = flags.DEFINE_list('protocols', ['paper'], 'Values of config.protocol.')
_SET = flags.DEFINE_list('set', [], 'Further overrides FIELD=VALUE for every run.')
_EMIT = flags.DEFINE_bool('emit', False, 'Print the commands instead of running them.')


def runs(workdir, config, methods, seeds, imbalances, protocols, overrides):
  """(run directory, command) for every combination, in a fixed order."""
  for method, imbalance, protocol, seed in itertools.product(methods, imbalances, protocols,
                                                             range(seeds)):
    run_dir = os.path.join(workdir, f'{method}_imb{imbalance}_{protocol}_seed{seed}')
    fields = {'method': method, 'seed': seed, 'protocol': protocol, 'progress_bar': False}
    if str(imbalance) != '0':
      fields['imbalance'] = imbalance
    command = [sys.executable, '-m', 'ohc_jax.main', f'--workdir={run_dir}', f'--config={config}']
    command += [f'--config.{k}={v}' for k, v in fields.items()]
    command += [f'--config.{o}' for o in overrides]
    yield run_dir, command


def main(argv):
  del argv
  if not _WORKDIR.value:
    sys.exit('error: --workdir is required: the parent directory of the runs')
  failed = 0
  for run_dir, command in runs(_WORKDIR.value, _CONFIG.value, _METHODS.value, _SEEDS.value,
                               _IMBALANCE.value, _PROTOCOLS.value, _SET.value):
    if os.path.exists(os.path.join(run_dir, 'results.json')):
      print(f'# finished: {run_dir}', file=sys.stderr)
      continue
    line = shlex.join(command)
    if _EMIT.value:
      print(line)
      continue
    print(f'running: {line}', file=sys.stderr, flush=True)
    if subprocess.run(command).returncode:
      failed += 1
      print(f'# failed: {run_dir}', file=sys.stderr)
  if failed:
    sys.exit(f'{failed} run(s) failed')


if __name__ == '__main__':
  app.run(main)
