"""The command-line wrapper of every tool (main, predict, report, benchmark): a quiet start-up, flags,
and one mapping of errors to a line on stderr and an exit code:

- a flag error or a UsageError (bad input; the message names the fix): `error: ...`, exit 2;
- a NonFiniteError (training diverged): `error: ...`, exit 1;
- a WriteFailed (disk full, I/O error; the last complete checkpoint is intact): `error: ...`,
  exit 1;
- Interrupted (SIGTERM or SIGINT; a checkpoint was saved): its message, exit 143 or 130; a second
  SIGINT (KeyboardInterrupt, no checkpoint): one line, exit 130.

A tool is `tool(flag_values, args) -> exit code or None` (args: the arguments left after the flags)
with a parser `parse(argv, flag_values) -> arguments left` that defines its flags on flag_values and
raises UsageError for bad flags. `main` runs it as a program, `run` in-process (tests).

Import this module before anything that loads TensorFlow or XLA: it sets TF_CPP_MIN_LOG_LEVEL.
"""

import os
import sys

# Before TensorFlow or XLA load: no C++ INFO notices (oneDNN, CPU features); warnings still show.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

import logging as py_logging  # pylint: disable=g-import-not-at-top,wrong-import-position
from typing import Callable, Optional, Sequence  # pylint: disable=wrong-import-position

from absl import app, flags, logging  # pylint: disable=wrong-import-position

from ohc_jax.errors import (Interrupted, NonFiniteError,  # pylint: disable=wrong-import-position
                            UsageError, WriteFailed)

Tool = Callable[[flags.FlagValues, list], Optional[int]]
Parser = Callable[[Sequence[str], flags.FlagValues], list]


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues,
                define: Callable[[flags.FlagValues], None] = lambda flag_values: None) -> list:
  """define(flag_values), then argv (argv[0]: the program) parsed into it; returns the arguments
  left, program first. Every flag error is a UsageError."""
  try:
    define(flag_values)
    return flag_values(list(argv))
  except flags.Error as e:  # One line, where absl gives one per flag.
    message = '; '.join(line.strip() for line in str(e).splitlines() if line.strip())
    raise UsageError(f'{message} (python -m {_program(argv)} --helpfull lists the flags)') from None


def _program(argv) -> str:
  name = os.path.basename(argv[0]) if argv else 'ohc_jax'
  return 'ohc_jax.' + name[:-3] if name.endswith('.py') else name


def _exit_code(tool: Tool, flag_values: flags.FlagValues, args: list) -> int:
  """tool(flag_values, args)'s exit code, with the errors above as one line on stderr."""
  try:
    return tool(flag_values, args) or 0
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except (NonFiniteError, WriteFailed) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  except Interrupted as e:  # SIGTERM: 143, SIGINT: 130; the checkpoint is saved.
    print(e, file=sys.stderr)
    return e.exit_code
  except KeyboardInterrupt:
    print('stopped at once by SIGINT: rerun the same command to resume from the last checkpoint',
          file=sys.stderr)
    return 130


def run(tool: Tool, parse: Parser, argv: Sequence[str]) -> int:
  """The exit code of the tool on argv (argv[0]: the program), in-process, with fresh flags."""
  flag_values = flags.FlagValues()
  try:
    args = parse(argv, flag_values)
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return _exit_code(tool, flag_values, args[1:])


def main(tool: Tool, parse: Parser = parse_flags, *, absl_verbosity: int = logging.WARNING):
  """`python -m ohc_jax.TOOL`: absl's app.run, quiet, with the exit codes above."""

  def parse_or_exit(argv):
    try:
      return parse(argv, flags.FLAGS)
    except UsageError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)

  def quiet_main(args):
    logging.set_verbosity(absl_verbosity)  # After parsing: app.run sets INFO there.
    # Not the INFO line "Unable to initialize backend 'tpu'"; its warnings (a GPU without a CUDA
    # jaxlib) still show.
    py_logging.getLogger('jax._src.xla_bridge').setLevel(py_logging.WARNING)
    from ohc_jax.models import conv
    conv.configure_xla_cpu()  # Before JAX starts its backend.
    return _exit_code(tool, flags.FLAGS, args[1:])

  app.run(quiet_main, flags_parser=parse_or_exit)
