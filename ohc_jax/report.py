r"""Every plot of a run, from its workdir: python -m ohc_jax.report WORKDIR (or --workdir=WORKDIR)

Restores the latest usable checkpoint (or --step), evaluates it on the run's evaluation data (the
data set is loaded as the run loaded it; --data_dir if it has moved) and writes the PNGs of
ohc_jax.run.plots into WORKDIR/plots/ (or --out). Works on finished and unfinished runs. Bad input (no
such workdir, no checkpoint, data not found): one line, exit code 2.
"""

import os
import tempfile

from ohc_jax import cli  # pylint: disable=g-bad-import-order  (first: quiet TensorFlow and XLA)

from absl import flags, logging

from ohc_jax.errors import UsageError


def make_report(workdir: str, *, out: str = None, step: int = None, data_dir: str = None) -> list:
  """Writes the plots of the run in workdir; returns their paths."""
  from ohc_jax.run import workdir_lock
  from ohc_jax.run.inference import load_trained
  if not os.path.isdir(workdir):
    raise UsageError(f'{workdir} does not exist: name the workdir of a training run')
  out = out or os.path.join(workdir, 'plots')
  _check_writable_folder(out)
  workdir_lock.note_if_unfinished(workdir)
  trained = load_trained(workdir, step=step)
  import jax
  import numpy as np

  from ohc_jax import data as data_lib
  from ohc_jax.run import evaluation, plots
  config = trained.config
  if data_dir:
    config.data_dir = data_dir
  data = data_lib.load(config)
  expected = tuple(trained.meta['input_shape'])
  shape = getattr(data.eval, 'images', data.eval).shape[1:]  # A streaming source has a shape.
  if tuple(shape) != expected:
    raise UsageError(f'the data set {config.dataset} now has inputs of shape {shape}, the run was '
                     f'trained on {expected}')
  sample = evaluation.eval_sample(config, len(data.eval))
  outputs = evaluation.evaluate(trained.eval_step, trained.state, data.eval, config, trained.mesh,
                           sample).outputs
  prior = np.exp(np.asarray(jax.device_get(trained.state.log_prior), np.float64))
  history = trained.meta.get('history') or []
  images = data_lib.sample_images(data.eval, sample)
  return plots.make_all(out, history=history,
                        prior=prior / prior.sum(), outputs=outputs, labels=outputs['label'],
                        images=images, num_clusters=config.num_clusters,
                        class_names=data.class_names,
                        centroids=np.asarray(jax.device_get(trained.state.params['centroids'])),
                        seed=config.seed)


def _check_writable_folder(out: str) -> None:
  """Raises UsageError unless the folder `out` is, or can be created as, a folder that can be
  written (before the run is restored and evaluated; nothing is created)."""
  existing = os.path.abspath(out)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  try:
    tempfile.TemporaryFile(dir=existing).close()
  except OSError as e:
    raise UsageError(f'cannot write the plots into {out} ({e.strerror or e} in {existing}): name a '
                     f'folder you can write with --out') from None


def parse_flags(argv, flag_values) -> list:

  def define(fv):
    flags.DEFINE_string('workdir', None, 'workdir of a training run (or give it as the argument)',
                        flag_values=fv)
    flags.DEFINE_string('out', None, 'folder for the PNGs (default WORKDIR/plots)', flag_values=fv)
    flags.DEFINE_integer('step', None, 'checkpoint step (default: latest)', flag_values=fv)
    flags.DEFINE_string('data_dir', None, 'tfds data dir, if not the run\'s', flag_values=fv)

  return cli.parse_flags(argv, flag_values, define)


def report(args, rest) -> None:
  """The command: the plots of the run in WORKDIR or --workdir (args: the parsed flags)."""
  workdirs = ([args.workdir] if args.workdir else []) + list(rest)
  if len(workdirs) != 1:
    raise UsageError(f'give one workdir, as the argument or --workdir, not '
                     f'{" and ".join(workdirs) or "none"}: python -m ohc_jax.report WORKDIR')
  for path in make_report(workdirs[0], out=args.out, step=args.step, data_dir=args.data_dir):
    print(path)


def run(argv) -> int:
  """The command line on argv (without the program name), in-process; returns the exit code."""
  return cli.run(report, parse_flags, ['ohc_jax.report', *argv])


if __name__ == '__main__':
  # ERROR: not Orbax's notes on read-only checkpoint dirs.
  cli.main(report, parse_flags, absl_verbosity=logging.ERROR)
