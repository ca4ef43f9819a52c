"""Stopping a run together: SIGTERM and SIGINT during training (`StopOnSignal` asks the loop to
stop; the loop saves a checkpoint and raises `Interrupted`), and the input failure of one of
several processes (`agree_on_failure`: every process stops, none saves past it)."""

import os
import signal
import threading
from typing import Optional

from ohc_jax.errors import Interrupted, UsageError  # pylint: disable=unused-import  (Interrupted)


class StopOnSignal:
  """Within the block, SIGTERM and SIGINT ask the loop to stop: `requested` turns true and the
  loop saves a checkpoint and raises Interrupted. A second SIGTERM changes nothing (schedulers and
  process groups deliver it more than once, and the checkpoint is what it asks for); a second
  SIGINT (Ctrl-C pressed again) stops at once, with no checkpoint past the last (cli: one line,
  exit 130).
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: Optional[int] = None
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:  # Ignored (e.g. nohup, `&`): left so.
          self._old[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, old in self._old.items():
      signal.signal(s, old)
    self._old = {}
    return False

  def _handle(self, signum, frame):
    if self.signum is not None:
      if signum == signal.SIGINT:
        raise KeyboardInterrupt
      return
    self.signum = signum
    # os.write, not print: the handler may interrupt a print to stderr (the progress bar's).
    os.write(2, f'\n{signal.Signals(signum).name}: saving a checkpoint after this step, then '
                f'stopping (press Ctrl-C to stop at once)\n'.encode())

  @property
  def requested(self) -> bool:
    return self.signum is not None

  def agreed(self) -> Optional[int]:
    """The signal, if any process received one (a collective: call it on every process at the
    same points of the loop). Single-process: no communication."""
    import jax
    if jax.process_count() == 1:
      return self.signum
    import numpy as np
    from jax.experimental import multihost_utils
    got = multihost_utils.process_allgather(np.int32(self.signum or 0))
    got = [int(g) for g in np.ravel(got) if int(g)]
    return got[0] if got else None


def agree_on_failure(failure: Optional[Exception]) -> None:
  """Raises a process's input failure on every process (a collective, like `agreed`): the failing
  one raises its own, the others a one-line UsageError naming it. A process whose input fails goes
  on with blank batches until this point, so that none waits for it in a step's collectives."""
  import jax
  if jax.process_count() == 1:
    if failure is not None:
      raise failure
    return
  import numpy as np
  from jax.experimental import multihost_utils
  failed = np.flatnonzero(np.ravel(multihost_utils.process_allgather(np.int32(failure is not None))))
  if failure is not None:
    raise failure
  if len(failed):
    raise UsageError(f'process {failed[0]} could not read its input (its log says why), so every '
                     f'process stopped: fix the data, then rerun to resume')
