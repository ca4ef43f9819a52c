"""One run per workdir: an advisory `fcntl` lock on WORKDIR/run.lock, held for the run's life.

The kernel releases it when the process dies, however it dies, so a run killed with SIGKILL is
resumed by the same command with no manual step; a stale file is no obstacle, a held lock is.
Several processes: each takes its own file (process 0 `run.lock`, process P `run.P.lock`) before
they connect, so every process of a second job on a busy workdir is refused on its own, in one
line, instead of waiting for peers that were refused. The file holds its holder (host, pid, since
when) for the refusal's message. `holder` tests the lock without taking it (predict, report)."""

import fcntl
import json
import os
import socket
import time
from typing import Optional

from ohc_jax.errors import UsageError


def lock_path(workdir: str, process: int = 0) -> str:
  return os.path.join(workdir, 'run.lock' if process == 0 else f'run.{process}.lock')


def _holder(path: str) -> Optional[dict]:
  try:
    with open(path) as f:
      h = json.load(f)
    return h if {'host', 'pid', 'since'} <= set(h) else None
  except (OSError, ValueError, TypeError):
    return None


def _describe(h: Optional[dict]) -> str:
  return (f'pid {h["pid"]} on {h["host"]} since {h["since"]}' if h else
          'a process that has not yet written its name')


class WorkdirLock:
  """The lock of one process of a run. `acquire` raises UsageError if a live process holds it;
  `release` removes the file (and the workdir, if the run made it and wrote nothing else)."""

  def __init__(self, workdir: str, process: int = 0):
    self.workdir, self.path = workdir, lock_path(workdir, process)
    self._fd: Optional[int] = None
    self._made: list[str] = []  # Directories this lock created, innermost last.

  def acquire(self) -> 'WorkdirLock':
    missing = os.path.abspath(self.workdir)
    while not os.path.exists(missing):
      self._made.insert(0, missing)
      missing = os.path.dirname(missing)
    while True:
      try:
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      except OSError as e:
        self._remove_made()
        raise UsageError(f'--workdir={self.workdir}: cannot write {self.path} ({e.strerror or e}): '
                         f'make it writable or choose another --workdir') from None
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        os.close(fd)
        self._remove_made()
        h = _holder(self.path)
        raise UsageError(
            f'{self.workdir} is in use by another run ({_describe(h)}): wait for it to end or '
            f'stop it{" (kill " + str(h["pid"]) + " on " + h["host"] + ")" if h else ""}, or '
            f'choose another --workdir; nothing was written') from None
      try:  # The file may have been removed by its last holder between open and flock: retry.
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({'host': socket.gethostname(), 'pid': os.getpid(),
                             'since': time.strftime('%Y-%m-%d %H:%M:%S %Z')}).encode())
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.remove(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)  # Unlocks.
    self._fd = None
    self._remove_made()

  def _remove_made(self) -> None:
    """A run refused or failed before writing anything leaves no directory behind."""
    for directory in reversed(self._made):
      try:
        os.rmdir(directory)
      except OSError:  # Not empty: the run wrote there.
        break
    self._made = []

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
    return False


def holder(workdir: str) -> Optional[str]:
  """Who holds the workdir's lock ('pid P on HOST since T'), or None; tests it with a shared lock
  on a read-only descriptor, released at once: nothing is written."""
  path = lock_path(workdir)
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    return _describe(_holder(path))
  finally:
    os.close(fd)
  return None


def note_if_unfinished(workdir: str) -> None:
  """predict and report: a line on stderr when the run they read has not finished (results.json
  is written last), saying whether it still trains. Silent where there is no run to read: the
  caller's own check says so."""
  if (os.path.exists(os.path.join(workdir, 'results.json'))
      or not os.path.isdir(os.path.join(workdir, 'checkpoints'))):
    return
  import sys
  busy = holder(workdir)
  state = f'still training ({busy})' if busy else 'stopped before its end'
  print(f'note: the run in {workdir} is unfinished, {state}: using its checkpoints so far',
        file=sys.stderr, flush=True)


def process_of(config) -> int:
  """This process's index, known before the processes connect: the config's (an explicit
  coordinator), Slurm's, else 0."""
  if config.get('coordinator_address'):
    return int(config.process_id)
  return int(os.environ.get('SLURM_PROCID', '0'))
