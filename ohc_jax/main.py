r"""Command line: train online hard clustering from a config file.

  python -m ohc_jax.main --workdir=runs/digits
  python -m ohc_jax.main --workdir=runs/c10 --config=cifar10 \
      --config.data_dir=../shared/data/tfds --config.num_epochs=10

--config is the NAME of a config file of configs/ (default, cifar10, mnist, ...) or the path of a
.py file whose get_config() returns the config; --config.FIELD=VALUE overrides a field. Bad input:
one line naming the problem, exit code 2, nothing written.
"""

import os
import re
import sys

# Before TensorFlow or XLA load: no C++ INFO notices (oneDNN, CPU features); warnings still show.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

import logging as py_logging  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import app, flags, logging  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

from ohc_jax import configuration  # pylint: disable=wrong-import-position
from ohc_jax.errors import UsageError  # pylint: disable=wrong-import-position


class _ConfigParser(flags.ArgumentParser):
  """--config=NAME or PATH (configuration.config_path) for ml_collections' config file parser."""

  def __init__(self, file_parser):
    self._file_parser = file_parser

  def parse(self, argument):
    path = configuration.config_path(argument)
    try:
      return self._file_parser.parse(path)
    except Exception as e:  # pylint: disable=broad-except  (a config file can raise anything)
      lines = str(e).strip().splitlines()
      raise UsageError(f'cannot load the config {path}: {lines[-1] if lines else type(e).__name__}'
                       f'; fix the file') from None

  def flag_type(self):
    return self._file_parser.flag_type()


def define_config_flag(flag_values, argv) -> None:
  """Defines --config; ml_collections reads its --config.FIELD=VALUE overrides from argv."""
  config_flags.DEFINE_config_file(
      'config', os.path.join(configuration.CONFIG_DIR, 'default.py'),
      f'Config NAME ({", ".join(configuration.config_names())}) or path of a config file.',
      flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag = flag_values['config']
  flag.parser = _ConfigParser(flag.parser)


def parse_flags(argv, flag_values=flags.FLAGS) -> list:
  """Defines --config and parses argv, with every error as a UsageError; returns the arguments left.

  (The config flag is defined here, not on import: defining it applies the overrides to the default
  config, which fails for an unknown field.)
  """
  try:
    define_config_flag(flag_values, argv)
    return flag_values(argv)
  except flags.Error as e:
    raise UsageError(f'{e} (python -m ohc_jax.main --helpfull lists the flags)') from None
  except (AttributeError, KeyError) as e:  # A --config.FIELD override the config lacks.
    fields = configuration.base_config().keys()
    for arg in argv[1:]:
      match = re.match(r'-{1,2}(?:no)?config\.([^=]+)', arg)
      if match and match.group(1) not in fields:
        raise configuration.unknown_field(match.group(1)) from None
    raise UsageError(f'bad --config override: {e}') from None


_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for config.json, metrics, results.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace the run in --workdir (finished or not) '
                                'instead of refusing or resuming it.')


def _fail(error: UsageError):
  print(f'error: {error}', file=sys.stderr)
  sys.exit(2)


def _parse_flags_or_exit(argv):
  try:
    return parse_flags(argv)
  except UsageError as e:
    _fail(e)


def main(argv):
  logging.set_verbosity(logging.WARNING)
  py_logging.getLogger('jax._src.xla_bridge').setLevel(py_logging.WARNING)  # Not the INFO line
  # "Unable to initialize backend 'tpu'"; its warnings (a GPU without CUDA jaxlib) still show.
  from ohc_jax import conv
  conv.configure_xla_cpu()  # Before JAX starts its backend.
  from ohc_jax import train
  from ohc_jax.interrupts import Interrupted
  try:
    if len(argv) > 1:
      raise UsageError(f'unexpected arguments {" ".join(argv[1:])}: write flags as --NAME=VALUE, '
                       f'config fields as --config.FIELD=VALUE')
    train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value, overwrite=_OVERWRITE.value)
  except UsageError as e:
    _fail(e)
  except train.NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except Interrupted as e:  # SIGTERM: 143, SIGINT: 130; the checkpoint is saved.
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main, flags_parser=_parse_flags_or_exit)
