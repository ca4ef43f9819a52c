r"""Every plot of a run, from its workdir: python -m ohc_jax.report WORKDIR

Restores the latest usable checkpoint (or --step), evaluates it on the run's evaluation data (the
data set is loaded as the run loaded it; --data_dir if it has moved) and writes the PNGs of
ohc_jax.plots into WORKDIR/plots/ (or --out). Works on finished and unfinished runs. Bad input (no
such workdir, no checkpoint, data not found): one line, exit code 2.
"""

import argparse
import os
import sys

from ohc_jax.errors import UsageError


def make_report(workdir: str, *, out: str = None, step: int = None, data_dir: str = None) -> list:
  """Writes the plots of the run in workdir; returns their paths."""
  from ohc_jax.inference import load_trained
  if not os.path.isdir(workdir):
    raise UsageError(f'{workdir} does not exist: name the workdir of a training run')
  trained = load_trained(workdir, step=step)
  import jax
  import numpy as np

  from ohc_jax import input_pipeline, plots, train
  config = trained.config
  if data_dir:
    config.data_dir = data_dir
  data = input_pipeline.load(config)
  expected = tuple(trained.meta['input_shape'])
  if tuple(data.eval.images.shape[1:]) != expected:
    raise UsageError(f'the data set {config.dataset} now has inputs of shape '
                     f'{data.eval.images.shape[1:]}, the run was trained on {expected}')
  outputs = train.evaluate(trained.eval_step, trained.state, data.eval, config, trained.mesh)
  prior = np.exp(np.asarray(jax.device_get(trained.state.log_prior), np.float64))
  history = trained.meta.get('history') or []
  return plots.make_all(out or os.path.join(workdir, 'plots'), history=history,
                        prior=prior / prior.sum(), outputs=outputs, labels=data.eval.labels,
                        images=data.eval.images, num_clusters=config.num_clusters,
                        class_names=data.class_names,
                        centroids=np.asarray(jax.device_get(trained.state.params['centroids'])),
                        seed=config.seed)


def run(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m ohc_jax.report',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('workdir', help='workdir of a training run')
  parser.add_argument('--out', default=None, help='folder for the PNGs (default WORKDIR/plots)')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
  parser.add_argument('--data_dir', default=None, help='tfds data dir, if not the run\'s')
  args = parser.parse_args(argv)
  try:
    paths = make_report(args.workdir, out=args.out, step=args.step, data_dir=args.data_dir)
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for path in paths:
    print(path)
  return 0


def main():
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from absl import logging
  logging.set_verbosity(logging.ERROR)  # Orbax's notes on read-only checkpoint dirs.
  sys.exit(run())


if __name__ == '__main__':
  main()
