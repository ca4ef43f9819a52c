"""The exceptions the command-line wrapper (cli.py) turns into one line and an exit code. They live
here, free of JAX and TensorFlow, so that the wrapper can catch them without loading either."""

import signal


def first_line(e: Exception) -> str:
  """'Type: first line of the message' of an exception, for a one-line error."""
  return f'{type(e).__name__}: {str(e).splitlines()[0]}' if str(e) else type(e).__name__


class UsageError(Exception):
  """Bad input from the user: the message names the problem and the fix. Exit code 2."""


class NonFiniteError(RuntimeError):
  """Non-finite loss, costs or gradients: the run stopped without saving the bad state. Exit code 1."""


class Interrupted(Exception):
  """SIGTERM or SIGINT: a checkpoint was saved and the run stopped; rerunning resumes it."""

  def __init__(self, signum: int, step: int, checkpoints: str):
    self.signum, self.step = signum, step
    self.exit_code = 128 + signum  # 143 for SIGTERM, 130 for SIGINT, as a shell reports them.
    super().__init__(f'stopped by {signal.Signals(signum).name} at step {step}: checkpoint saved '
                     f'in {checkpoints}; rerun the same command to resume')
