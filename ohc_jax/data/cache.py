"""The data cache, $OHC_JAX_CACHE (else ~/.cache/ohc_jax): what a child process made once from a
prepared data set (tfds splits decoded to .npy files, ArrayRecord copies of TFRecord sets), keyed
by the prepared files (names, sizes, times) so that re-preparing a data set makes it again.

An entry is written in a temporary folder and renamed into place, so concurrent processes and
killed runs leave no partial entry (the next run that looks for it removes the temporary folders of
killed writers); its last file, `complete.json`, lists every file's size, and an entry whose files
no longer match it (truncated or deleted by hand, a full disk) is removed and made again, with a
warning saying so. Deleting the cache is always safe.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from typing import Iterator, Optional

from ohc_jax.errors import UsageError

COMPLETE = 'complete.json'
_PROGRESS = 'progress: '


def root(kind: str) -> str:
  """The folder of one kind of entry ('tfds': decoded splits, 'array_record': copies)."""
  return os.path.join(os.environ.get('OHC_JAX_CACHE') or
                      os.path.join(os.path.expanduser('~'), '.cache', 'ohc_jax'), kind)


def key(label: str, *described) -> str:
  """An entry's folder name: `label` made safe, then a digest of everything that defines it."""
  slug = ''.join(c if c.isalnum() else '_' for c in label)[:60]
  return f'{slug}-{hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]}'


def files_of(folder: str) -> list:
  """(path relative to folder, size, mtime) of every file under it, sorted: what a key describes."""
  return sorted((os.path.relpath(os.path.join(d, f), folder), os.path.getsize(os.path.join(d, f)),
                 os.path.getmtime(os.path.join(d, f)))
                for d, _, fs in os.walk(folder) for f in fs if not f.startswith('.'))


def damage(entry: str) -> Optional[str]:
  """What is wrong with a cache entry (a missing or resized file, no completion record), or None
  when it is whole."""
  try:
    with open(os.path.join(entry, COMPLETE)) as f:
      sizes = json.load(f)
  except (OSError, ValueError):
    return f'{COMPLETE} is missing or unreadable'
  for name, size in sizes.items():
    path = os.path.join(entry, name)
    if not os.path.isfile(path):
      return f'{name} is missing'
    if os.path.getsize(path) != size:
      return f'{name} is {os.path.getsize(path)} bytes, {size} were written'
  return None


def _temporary(target: str, pid: int) -> str:
  """The temporary folder process `pid` of this host writes `target` in (_remove_stale parses the
  name): named by host too, since a cache on a shared disk holds other hosts' writers, whose
  processes this host cannot see."""
  return f'{target}.tmp{pid}@{socket.gethostname()}'


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process.
    pass
  return True


def _remove_stale(target: str) -> None:
  """Removes the temporary folders of `target` left by writers of this host that died before
  renaming them (SIGKILL, out of memory); a live writer's is left alone, as is another host's."""
  folder, name = os.path.split(target)
  ours = re.compile(rf'{re.escape(name)}\.tmp(\d+)@{re.escape(socket.gethostname())}')
  for other in os.listdir(folder) if os.path.isdir(folder) else ():
    match = ours.fullmatch(other)
    if match and not _alive(int(match[1])):
      shutil.rmtree(os.path.join(folder, other), ignore_errors=True)


def usable(entry: str) -> bool:
  """Whether the entry is there and whole; a damaged one is removed, with a warning, to be made
  again. Every run checks here before it uses or makes the entry, so temporary folders of it that
  dead writers left are removed here too."""
  _remove_stale(entry)
  if not os.path.isdir(entry):
    return False
  problem = damage(entry)
  if problem is None:
    return True
  print(f'warning: the cache entry {entry} is damaged ({problem}): making it again',
        file=sys.stderr, flush=True)
  shutil.rmtree(entry, ignore_errors=True)
  return False


@contextlib.contextmanager
def entry(target: str) -> Iterator[str]:
  """Yields a temporary folder to write an entry in; on success records its files' sizes and
  renames it to `target` (if another process made it first, keeps theirs); on any error removes
  it, so no partial folder is left in the cache."""
  tmp = _temporary(target, os.getpid())
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    yield tmp
    sizes = {os.path.relpath(os.path.join(d, f), tmp): os.path.getsize(os.path.join(d, f))
             for d, _, fs in os.walk(tmp) for f in fs}
    with open(os.path.join(tmp, COMPLETE), 'w') as f:
      json.dump(sizes, f)
    try:
      os.replace(tmp, target)
    except OSError:  # Another process made it first.
      pass
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def make(module: str, *args: str) -> str:
  """Runs `python -m module args` (which loads TensorFlow, so this process never does) to make an
  entry: shows its progress lines as a bar on stderr, returns the last line it prints (the entry's
  path), raises its `error:` line (exit 2) as a UsageError."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
  child = subprocess.Popen([sys.executable, '-m', module, *args], env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  other, shown = [], False
  for line in child.stderr:
    if line.startswith(_PROGRESS):
      _show(line.removeprefix(_PROGRESS).rstrip('\n'))
      shown = True
    else:
      other.append(line)
  out = child.stdout.read()
  child.wait()
  if shown and sys.stderr.isatty():
    print(file=sys.stderr)
  lines = ''.join(other).strip().splitlines()
  if child.returncode == 2 and lines:
    raise UsageError(lines[-1].removeprefix('error: '))
  if child.returncode != 0:
    raise RuntimeError(f'{module} {" ".join(args[:2])} failed ({child.returncode}):\n'
                       f'{"".join(other)[-3000:]}')
  return out.strip().splitlines()[-1]


def _show(line: str) -> None:
  """`WHAT DONE TOTAL` as a bar: redrawn in place on a terminal, else only the last line."""
  what, done, total = line.rsplit(' ', 2)
  done, total = int(done), max(int(total), 1)
  bar = '#' * (30 * done // total)
  text = f'{what} [{bar:<30}] {done}/{total}'
  if sys.stderr.isatty():
    print(f'\r{text}', end='', file=sys.stderr, flush=True)
  elif done == total:
    print(text, file=sys.stderr, flush=True)


def progress(what: str, done: int, total: int) -> None:
  """In the child: reports `done` of `total` to the parent's bar."""
  print(f'{_PROGRESS}{what} {done} {total}', file=sys.stderr, flush=True)
