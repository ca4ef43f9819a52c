"""Disk faults for the tests: a full or read-only mount, a checkpoint's largest file damaged."""

import contextlib
import os
import subprocess

import pytest

from ohc_jax.run import checkpoints


@contextlib.contextmanager
def mounted(path, *options):
  """A mount for the block (tmpfs or a read-only bind), or the test skipped where it cannot."""
  os.makedirs(path, exist_ok=True)
  done = subprocess.run(['mount', *options, str(path)], capture_output=True)
  if done.returncode:
    pytest.skip(f'cannot mount here: {done.stderr.decode().strip()}')
  try:
    yield path
  finally:
    subprocess.run(['umount', '-l', str(path)], check=False)


def _largest_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs
           if f != checkpoints.DIGEST]
  return max(files, key=os.path.getsize)


def truncate(step_dir):
  """Cuts the checkpoint's largest file to half its length."""
  path = _largest_file(step_dir)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def flip_bytes(step_dir):
  """Inverts 16 bytes in the middle of the checkpoint's largest file, its length unchanged."""
  path = _largest_file(step_dir)
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    chunk = f.read(16)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0xFF for b in chunk))
