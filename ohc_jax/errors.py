"""The exceptions the command-line wrapper (cli.py) turns into one line and an exit code. They live
here, free of JAX and TensorFlow, so that the wrapper can catch them without loading either."""

import contextlib
import signal
from typing import Optional


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


class WriteFailed(Exception):
  """A write failed (disk full, I/O error, read-only): a training run stopped with its last complete
  checkpoint intact, predict with no CSV written. Exit code 1. `fix` is added by the caller
  (with_fix), which knows what a rerun does: training's loop knows the step it resumes from."""

  def __init__(self, path: str, what: str, reason: str, errno: int = 0, fix: str = ''):
    self.path, self.what, self.reason, self.errno, self.fix = path, what, reason, errno, fix
    super().__init__(f'cannot write {what} ({path}): {reason}' + (f'; {fix}' if fix else ''))

  def with_fix(self, folder: str, rerun: str) -> 'WriteFailed':
    """This failure with its fix: what to do about `folder` (by the error code), then `rerun`
    (what rerunning the command does)."""
    import errno as errno_lib
    what_to_do = {errno_lib.ENOSPC: f'free space under {folder}',
                  errno_lib.EDQUOT: f'free space under {folder} (disk quota)',
                  errno_lib.EROFS: f'make {folder} writable',
                  errno_lib.EACCES: f'make {folder} writable'}.get(
                      self.errno, f'check the disk under {folder}')
    return WriteFailed(self.path, self.what, self.reason, self.errno, f'{what_to_do}, {rerun}')


def resumes_from(step: Optional[int]) -> str:
  """WriteFailed.with_fix's `rerun` of a training run whose last complete checkpoint is `step`."""
  return (f'then rerun: it resumes from step {step}' if step is not None else
          'then rerun: it starts afresh')


@contextlib.contextmanager
def writing(path: str, what: str):
  """Turns an OSError of the block into WriteFailed naming `path` and `what` was being written."""
  try:
    yield
  except OSError as e:
    raise WriteFailed(path, what, e.strerror or str(e), e.errno or 0) from None
