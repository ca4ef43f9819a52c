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

from ohc_jax import cli  # pylint: disable=g-bad-import-order  (first: quiet TensorFlow and XLA)

from absl import flags  # pylint: disable=g-bad-import-order
from ml_collections import config_flags

from ohc_jax import configuration
from ohc_jax.errors import UsageError


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


def _define_flags(flag_values, argv) -> None:
  define_config_flag(flag_values, argv)
  flags.DEFINE_string('workdir', None, 'Directory for config.json, metrics, results.',
                      flag_values=flag_values)
  flags.DEFINE_bool('overwrite', False, 'Replace the run in --workdir (finished or not) instead of '
                    'refusing or resuming it.', flag_values=flag_values)


def parse_flags(argv, flag_values=flags.FLAGS) -> list:
  """Defines the flags and parses argv, with every error as a UsageError; returns the arguments left.

  (The config flag is defined here, not on import: defining it applies the overrides to the default
  config, which fails for an unknown field.)
  """
  try:
    return cli.parse_flags(argv, flag_values, lambda fv: _define_flags(fv, argv))
  except (AttributeError, KeyError) as e:  # A --config.FIELD override the config lacks.
    fields = configuration.base_config().keys()
    for arg in argv[1:]:
      match = re.match(r'-{1,2}(?:no)?config\.([^=]+)', arg)
      if match and match.group(1) not in fields:
        raise configuration.unknown_field(match.group(1)) from None
    raise UsageError(f'bad --config override: {e}') from None


def train(flag_values, args) -> None:
  """The command: trains --config into --workdir (flag_values: the parsed flags)."""
  if args:
    raise UsageError(f'unexpected arguments {" ".join(args)}: write flags as --NAME=VALUE, config '
                     f'fields as --config.FIELD=VALUE')
  if not flag_values.workdir:
    raise UsageError('--workdir is required: name the folder for the run\'s outputs')
  from ohc_jax.run import train as train_lib
  train_lib.train_and_evaluate(flag_values.config, flag_values.workdir,
                               overwrite=flag_values.overwrite)


if __name__ == '__main__':
  cli.main(train, parse_flags)
