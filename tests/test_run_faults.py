"""The run layer's faults: one run per workdir (the lock), a full disk or failed write in one line
with the last complete checkpoint intact and an exact resume, a checkpoint without its digest
verified by its state checksum, a read-only checkpoint folder refused at start-up, and two SIGTERMs
in a row."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from ohc_jax import configuration
from ohc_jax.configuration import CONFIG_DIR
from ohc_jax.errors import UsageError, WriteFailed, resumes_from
from ohc_jax.run import checkpoints, interrupts, logging_utils, resume, train, workdir_lock
from disk_faults import flip_bytes, mounted

REPO = os.path.dirname(CONFIG_DIR)
_CLI = [sys.executable, '-m', 'ohc_jax.main', '--config.progress_bar=False',
        '--config.plots_every_epochs=0']


def _digits(**overrides):
  c = configuration.from_file(os.path.join(CONFIG_DIR, 'default.py'))
  c.update({'progress_bar': False, 'plots_every_epochs': 0, 'num_epochs': 2,
            'checkpoint_every_steps': 4, **overrides})
  return c


def _strip(results):
  return {k: ({f: x for f, x in v.items() if f != 'train_images_per_s'}
              if k in ('final', 'best_nmi') else v) for k, v in results.items()}


# -- the lock ------------------------------------------------------------------------------------


def test_a_held_workdir_is_refused_naming_its_holder_and_nothing_is_written(tmp_path):
  work = tmp_path / 'run'
  with workdir_lock.WorkdirLock(str(work)):
    holder = json.loads((work / 'run.lock').read_text())
    assert holder['pid'] == os.getpid()
    before = (work / 'run.lock').stat()
    with pytest.raises(UsageError) as e:
      workdir_lock.WorkdirLock(str(work)).acquire()
    assert f'pid {os.getpid()} on {socket.gethostname()} since' in str(e.value)
    assert 'choose another --workdir' in str(e.value)
    after = (work / 'run.lock').stat()
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
    assert workdir_lock.holder(str(work)).startswith(f'pid {os.getpid()}')
    # Another process's file is another lock: several processes of one run each hold their own.
    with workdir_lock.WorkdirLock(str(work), process=1):
      assert (work / 'run.1.lock').exists()
  assert not work.exists()  # Made by the lock, nothing else written: removed with it.
  assert workdir_lock.holder(str(work)) is None


def test_a_lock_left_by_a_killed_process_is_free(tmp_path):
  work = tmp_path / 'run'
  code = (f'from ohc_jax.run import workdir_lock; import time; '
          f'workdir_lock.WorkdirLock({str(work)!r}).acquire(); print("held", flush=True); '
          f'time.sleep(60)')
  proc = subprocess.Popen([sys.executable, '-c', code], cwd=REPO, stdout=subprocess.PIPE,
                          env=dict(os.environ, PYTHONPATH=REPO), text=True)
  assert proc.stdout.readline().strip() == 'held'
  with pytest.raises(UsageError, match=f'pid {proc.pid}'):
    workdir_lock.WorkdirLock(str(work)).acquire()
  proc.kill()
  proc.wait()
  assert (work / 'run.lock').exists()  # Stale, but not held: taken without a manual step.
  with workdir_lock.WorkdirLock(str(work)):
    pass


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_is_refused_then_sigkill_and_rerun_resumes(tmp_path):
  work, env = tmp_path / 'run', dict(os.environ, PYTHONPATH=REPO)
  first = subprocess.Popen(_CLI + ['--config.num_epochs=30', f'--workdir={work}'], cwd=REPO,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not checkpoints.committed_steps(work):
    assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
    time.sleep(0.1)
  second = subprocess.run(_CLI + ['--config.num_epochs=30', f'--workdir={work}'], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=240)
  assert second.returncode == 2
  assert second.stderr.count('\n') == 1 and second.stderr.startswith('error: ')
  assert f'is in use by another run (pid {first.pid} on' in second.stderr
  first.kill()
  first.wait()
  again = subprocess.run(_CLI + ['--config.num_epochs=1', f'--workdir={work}'], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=240)
  assert again.returncode == 0, again.stderr[-2000:]
  assert 'resuming from the checkpoint of step' in again.stdout
  assert not (work / 'run.lock').exists()


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_lock_a_file_each_and_a_second_job_is_refused_on_both(tmp_path):
  """Two processes over loopback: each holds its own file; a second two-process job on the same
  workdir is refused on each of its processes before they connect (no process waits for a peer)."""
  work = tmp_path / 'run'
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')

  def job(port, epochs):
    return [subprocess.Popen(
        _CLI + [f'--config.num_epochs={epochs}', f'--workdir={work}', '--config.distributed=True',
                f'--config.coordinator_address=127.0.0.1:{port}', '--config.num_processes=2',
                f'--config.process_id={i}'], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for i in range(2)]

  first = job(_free_port(), 30)
  deadline = time.time() + 300
  while not ((work / 'run.lock').exists() and (work / 'run.1.lock').exists()):
    assert all(p.poll() is None for p in first) and time.time() < deadline
    time.sleep(0.1)
  holders = [json.loads((work / name).read_text())['pid'] for name in ('run.lock', 'run.1.lock')]
  assert holders == [p.pid for p in first]
  for i, p in enumerate(job(_free_port(), 30)):
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and err.count('\n') == 1, err[-2000:]
    assert f'in use by another run (pid {holders[i]} on' in err
  for p in first:
    p.kill()
    p.communicate()


def test_predict_and_report_say_when_the_run_is_unfinished(tmp_path, capsys):
  work = tmp_path / 'run'
  work.mkdir()
  workdir_lock.note_if_unfinished(str(work))  # No run to read: the caller's own check says so.
  assert capsys.readouterr().err == ''
  (work / 'checkpoints').mkdir()
  with workdir_lock.WorkdirLock(str(work)):
    workdir_lock.note_if_unfinished(str(work))
    assert 'unfinished, still training (pid' in capsys.readouterr().err
  workdir_lock.note_if_unfinished(str(work))
  assert 'unfinished, stopped before its end' in capsys.readouterr().err
  (work / 'results.json').write_text('{}')
  workdir_lock.note_if_unfinished(str(work))
  assert capsys.readouterr().err == ''


# -- failed writes -------------------------------------------------------------------------------


def test_a_failed_write_names_the_path_what_and_the_fix():
  with pytest.raises(WriteFailed) as e:
    from ohc_jax.errors import writing
    with writing('/w/metrics.jsonl', 'the evaluation logs'):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  message = str(e.value.with_fix('/w', resumes_from(14)))
  assert message == ('cannot write the evaluation logs (/w/metrics.jsonl): No space left on '
                     'device; free space under /w, then rerun: it resumes from step 14')
  eio = WriteFailed('/w/x', 'a checkpoint', 'Input/output error', errno.EIO).with_fix(
      '/w', resumes_from(None))
  assert str(eio).endswith('check the disk under /w, then rerun: it starts afresh')


def test_orbax_failures_are_read_for_their_os_error():
  orbax_text = ('RESOURCE_EXHAUSTED: Error writing "step/0" in OCDBT database: Failed to write '
                "87692 bytes to file 7: No space left on device [os_error_code='28']")
  failure = checkpoints._save_failure(ValueError(orbax_text), '/w/checkpoints/28')
  assert failure.errno == errno.ENOSPC and failure.reason == 'No space left on device'
  failure = checkpoints._save_failure(OSError(errno.EROFS, 'Read-only file system'), '/w/c/1')
  assert failure.errno == errno.EROFS


def _run_until_write_fails(config, work):
  with pytest.raises(WriteFailed) as e:
    train.train_and_evaluate(config, str(work))
  return str(e.value)


@pytest.mark.slow
def test_full_disk_at_a_checkpoint_is_one_line_then_the_rerun_resumes_exactly(tmp_path):
  """A 600 KB tmpfs holds the first checkpoint, not the second: the run stops in one line, the
  first checkpoint intact; the workdir moved where there is space resumes to the uninterrupted
  run's results."""
  config = _digits(checkpoint_every_steps=0)
  finished = train.train_and_evaluate(config, str(tmp_path / 'whole'))
  with mounted(tmp_path / 'small', '-t', 'tmpfs', '-o', 'size=600k', 'tmpfs') as small:
    work = small / 'run'
    message = _run_until_write_fails(config, work)
    assert message.startswith('cannot write a checkpoint (') and 'No space left on device' in message
    assert message.endswith(f'free space under {work}, then rerun: it resumes from step 14')
    assert checkpoints.committed_steps(work) == [14]
    assert checkpoints.verify_digest(str(work / 'checkpoints' / '14')) is None
    shutil.copytree(work, tmp_path / 'moved')
  assert _strip(train.train_and_evaluate(config, str(tmp_path / 'moved'))) == _strip(finished)


@pytest.mark.slow
def test_full_disk_in_a_cli_run_prints_one_line_and_no_orbax_storm(tmp_path):
  with mounted(tmp_path / 'small', '-t', 'tmpfs', '-o', 'size=600k', 'tmpfs') as small:
    done = subprocess.run(_CLI + ['--config.num_epochs=2', f'--workdir={small / "run"}'],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                          text=True, timeout=300)
  assert done.returncode == 1
  # Which write meets the full disk first (a checkpoint, or the cluster map beside the asynchronous
  # save) depends on timing; either way it is one line naming the fix.
  assert (done.stderr.startswith('error: cannot write ') and 'No space left on device' in done.stderr
          and 'then rerun: it resumes from step' in done.stderr
          and done.stderr.count('\n') == 1), done.stderr[-3000:]


@pytest.mark.slow
def test_a_log_write_failing_stops_in_one_line_and_the_rerun_resumes_exactly(tmp_path,
                                                                              monkeypatch):
  """EIO injected into metrics.jsonl's write at epoch 2 (a tmpfs cannot fail a small append
  before the checkpoint beside it)."""
  config = _digits()
  finished = train.train_and_evaluate(config, str(tmp_path / 'whole'))
  write_epoch = logging_utils.MetricWriter.write_epoch

  def failing(self, record):
    if record['epoch'] == 2:
      from ohc_jax.errors import writing
      with writing(self._metrics, 'the evaluation logs'):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    write_epoch(self, record)

  monkeypatch.setattr(logging_utils.MetricWriter, 'write_epoch', failing)
  work = tmp_path / 'run'
  message = _run_until_write_fails(config, work)
  assert message == (f'cannot write the evaluation logs ({work / "metrics.jsonl"}): Input/output '
                     f'error; check the disk under {work}, then rerun: it resumes from step 28')
  monkeypatch.undo()
  assert not (work / 'run.lock').exists()
  assert _strip(train.train_and_evaluate(config, str(work))) == _strip(finished)
  epochs = [json.loads(l)['epoch'] for l in (work / 'metrics.jsonl').read_text().splitlines()]
  assert epochs == [1, 2]


def test_a_read_only_checkpoint_folder_is_refused_at_start_up(tmp_path):
  work = tmp_path / 'run'
  (work / 'checkpoints').mkdir(parents=True)
  (tmp_path / 'src').mkdir()
  with mounted(work / 'checkpoints', '--bind', str(tmp_path / 'src')):
    done = subprocess.run(['mount', '-o', 'remount,bind,ro', str(work / 'checkpoints')],
                          capture_output=True)
    if done.returncode:
      pytest.skip('cannot remount read-only here')
    with pytest.raises(UsageError, match='cannot write in .*checkpoints .Read-only file system.'):
      resume.decide(_digits(), str(work), False)


# -- checkpoints without their digest --------------------------------------------------------------


def test_the_state_checksum_sees_a_changed_or_swapped_value():
  state = {'a': jnp.arange(6, dtype=jnp.float32), 'b': jnp.ones((2, 3), jnp.bfloat16),
           'c': jnp.zeros(3, jnp.int32), 'd': jnp.array([True, False])}
  base = checkpoints.state_checksum(state)
  assert checkpoints.state_checksum(dict(state)) == base
  assert checkpoints.state_checksum({**state, 'a': state['a'].at[3].set(3.0001)}) != base
  assert checkpoints.state_checksum({**state, 'a': state['a'][::-1]}) != base
  assert checkpoints.state_checksum({**state, 'd': jnp.array([False, True])}) != base


@pytest.mark.slow
def test_a_checkpoint_without_its_digest_is_checked_and_the_one_before_restored(tmp_path, capsys):
  config = _digits()
  finished = train.train_and_evaluate(config, str(tmp_path / 'whole'))
  work = tmp_path / 'run'
  shutil.copytree(tmp_path / 'whole', work)
  (work / 'results.json').unlink()
  latest = work / 'checkpoints' / '28'
  (latest / checkpoints.DIGEST).unlink()  # Killed between Orbax's commit and the digest.
  flip_bytes(latest)
  capsys.readouterr()
  results = train.train_and_evaluate(config, str(work))
  out, err = capsys.readouterr()
  assert 'checkpoints/28 is unusable' in err
  assert 'resuming from the checkpoint of step 24' in out
  assert os.listdir(work / checkpoints.QUARANTINE_DIR) == ['28']
  assert _strip(results) == _strip(finished)


# -- signals -------------------------------------------------------------------------------------


def test_a_second_sigterm_changes_nothing_and_a_second_sigint_stops_at_once():
  with interrupts.StopOnSignal() as stop:
    # raise_signal in this thread; sleep runs the Python handler (PEP 475) before it returns.
    for _ in range(2):
      signal.raise_signal(signal.SIGTERM)
      time.sleep(0.05)
    assert stop.signum == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
      signal.raise_signal(signal.SIGINT)
      time.sleep(0.05)


@pytest.mark.slow
def test_two_sigterms_50_ms_apart_exit_143_with_a_checkpoint(tmp_path):
  work = tmp_path / 'run'
  proc = subprocess.Popen(_CLI + ['--config.num_epochs=30', '--config.checkpoint_every_steps=5',
                                  f'--workdir={work}'], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not checkpoints.committed_steps(work):
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err[-2000:]
  assert 'Traceback' not in err and 'checkpoint saved' in err
  stopped = int(err.split('stopped by SIGTERM at step ')[1].split(':')[0])
  assert stopped in checkpoints.committed_steps(work)
  assert np.all(np.diff(checkpoints.committed_steps(work)) > 0)


def test_a_save_failing_in_orbax_raises_at_once_and_close_does_not_hang(tmp_path):
  """The checkpoint folder turned read-only under a running Checkpointer: the save raises
  WriteFailed (before: the run hung waiting for Orbax's thread), and close returns."""
  import flax
  import jax

  @flax.struct.dataclass
  class State:
    step: jax.Array
    x: jax.Array

  ckpt = checkpoints.Checkpointer(str(tmp_path / 'run'))
  ckpt.save(State(jnp.int32(1), jnp.ones(100)), {'epoch': 1})
  ckpt.wait()
  (tmp_path / 'src').mkdir()
  with mounted(tmp_path / 'run' / 'checkpoints', '--bind', str(tmp_path / 'src')) as folder:
    if subprocess.run(['mount', '-o', 'remount,bind,ro', str(folder)]).returncode:
      pytest.skip('cannot remount read-only here')
    with pytest.raises(WriteFailed, match='Read-only file system') as e:
      ckpt.save(State(jnp.int32(2), jnp.ones(100)), {'epoch': 1})
      ckpt.wait()
    assert e.value.errno == errno.EROFS
    ckpt.close()
