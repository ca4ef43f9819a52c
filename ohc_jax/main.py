r"""Command line: train online hard clustering from a config file.

  python -m ohc_jax.main --workdir=runs/digits
  python -m ohc_jax.main --workdir=runs/c10 --config=configs/cifar10.py \
      --config.data_dir=../shared/data/tfds --config.num_epochs=10
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ohc_jax.configuration import CONFIG_DIR

_DEFAULT_CONFIG = os.path.join(CONFIG_DIR, 'default.py')

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for config.json, metrics, results.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace the run in --workdir (finished or not) '
                                'instead of refusing or resuming it.')
_CONFIG = config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'Training configuration.',
                                          lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}: use --config.FIELD=VALUE')
  from ohc_jax import conv
  conv.configure_xla_cpu()  # Before JAX starts its backend.
  from ohc_jax import train
  from ohc_jax.errors import UsageError
  from ohc_jax.interrupts import Interrupted
  logging.set_verbosity(logging.WARNING)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except train.NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except Interrupted as e:  # SIGTERM: 143, SIGINT: 130; the checkpoint is saved.
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main)
