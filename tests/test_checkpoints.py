"""Checkpoints: exact resume after SIGTERM and SIGKILL, fallback from corrupted checkpoints,
refusal of a changed config, --overwrite, and the non-finite guard."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ohc_jax import configuration
from ohc_jax.run import checkpoints, interrupts, steps, train
from ohc_jax.run import resume
from ohc_jax.configuration import CONFIG_DIR
from ohc_jax.errors import UsageError
from ohc_jax.run.inference import load_trained
from disk_faults import flip_bytes, truncate

pytestmark = pytest.mark.slow  # Every test trains a model (most share a module fixture that does).

REPO = os.path.dirname(CONFIG_DIR)


def _strip(record):
  return {k: v for k, v in record.items() if k != 'train_images_per_s'}


def _same_results(a, b):
  """Equal but for the timing field (images/s)."""
  strip = lambda r: {k: _strip(v) if k in ('final', 'best_nmi') else v for k, v in r.items()}
  assert strip(a) == strip(b)
  assert a['final']['epoch'] == 2 and a['final']['step'] == 28


def _digits(**overrides):
  c = configuration.from_file(os.path.join(CONFIG_DIR, 'default.py'))
  c.update(progress_bar=False, plots_every_epochs=0, **overrides)
  return c


# -- SIGKILL of the command line --------------------------------------------------------------

_CLI = [sys.executable, '-m', 'ohc_jax.main', '--config.num_epochs=2', '--config.progress_bar=False',
        '--config.checkpoint_every_steps=1', '--config.plots_every_epochs=0']


def _start(workdir, log):
  # XLA_FLAGS is kept: the subprocess sees the same 8 CPU devices as this process.
  env = dict(os.environ, PYTHONPATH=REPO)
  out, err = open(f'{log}.out', 'w'), open(f'{log}.err', 'w')
  return subprocess.Popen(_CLI + [f'--workdir={workdir}'], cwd=REPO, env=env, stdout=out,
                          stderr=err)


def _wait_for_checkpoint(proc, workdir, at_least, log, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      pytest.fail(f'run ended early ({proc.returncode}): {open(f"{log}.err").read()[-2000:]}')
    if any(s >= at_least for s in checkpoints.committed_steps(workdir)):
      return
    time.sleep(0.02)
  proc.kill()
  pytest.fail('no checkpoint in time')


def test_sigkill_mid_epoch_then_rerun_gives_the_uninterrupted_results(finished, tmp_path):
  work, log = tmp_path / 'run', str(tmp_path / 'log')
  # Killed during epoch 2 (14 steps an epoch), possibly in the middle of a save.
  proc = _start(work, log + '1')
  _wait_for_checkpoint(proc, work, 17, log + '1')
  proc.kill()
  assert proc.wait(timeout=60) == -signal.SIGKILL
  assert not (work / 'results.json').exists()
  # The same command again resumes and finishes: the results of the uninterrupted run.
  proc = _start(work, log + '2')
  assert proc.wait(timeout=300) == 0, open(log + '2.err').read()[-2000:]
  assert 'resuming from the checkpoint of step' in open(log + '2.out').read()
  _same_results(json.loads((work / 'results.json').read_text()), finished[1])
  epochs = [json.loads(line)['epoch'] for line in (work / 'metrics.jsonl').read_text().splitlines()]
  assert epochs == [1, 2]
  logged = [json.loads(line)['step'] for line in (work / 'steps.jsonl').read_text().splitlines()]
  assert logged == sorted(set(logged))  # No step logged twice across the two processes.


# -- in-process runs ---------------------------------------------------------------------------


_CONFIG = dict(num_epochs=2, checkpoint_every_steps=4)


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """Digits, 2 epochs of 14 steps, checkpoints every 4 steps: 20, 24, 28 are kept."""
  workdir = tmp_path_factory.mktemp('ckpt') / 'run'
  return workdir, train.train_and_evaluate(_digits(**_CONFIG), str(workdir))


def _unfinished_copy(finished, tmp_path):
  """A copy of the finished run without results.json: what a run killed at its end leaves."""
  work = tmp_path / 'run'
  shutil.copytree(finished[0], work)
  (work / 'results.json').unlink()
  return work


def _listing(directory):
  return {os.path.relpath(os.path.join(r, f), directory): os.path.getsize(os.path.join(r, f))
          for r, _, fs in os.walk(directory) for f in fs}


def test_checkpoints_kept_and_saved_with_digest(finished):
  workdir, results = finished
  assert checkpoints.committed_steps(workdir) == [20, 24, 28]
  for s in (20, 24, 28):
    assert checkpoints.verify_digest(str(workdir / 'checkpoints' / str(s))) is None
  assert json.loads((workdir / 'cluster_map.json').read_text())['step'] == 28


def test_corrupted_latest_checkpoints_fall_back_with_a_warning(finished, tmp_path, capsys):
  work = _unfinished_copy(finished, tmp_path)
  truncate(work / 'checkpoints' / '28')
  flip_bytes(work / 'checkpoints' / '24')
  capsys.readouterr()
  results = train.train_and_evaluate(_digits(**_CONFIG), str(work))
  out, err = capsys.readouterr()
  assert 'checkpoints/28 is unusable' in err and 'truncated' in err
  assert 'checkpoints/24 is unusable' in err and 'corrupted' in err
  assert 'resuming from the checkpoint of step 20: epoch 2, step 6 of 14' in out
  _same_results(results, finished[1])  # Resumed mid-epoch, exactly.
  # Nothing deleted: the unusable checkpoints were moved aside.
  assert sorted(os.listdir(work / checkpoints.QUARANTINE_DIR)) == ['24', '28']
  assert checkpoints.committed_steps(work) == [20, 24, 28]


def test_no_usable_checkpoint_stops_clearly_and_deletes_nothing(finished, tmp_path):
  work = _unfinished_copy(finished, tmp_path)
  for s in (20, 24, 28):
    truncate(work / 'checkpoints' / str(s))
  before = _listing(work / 'checkpoints')
  with pytest.raises(checkpoints.CheckpointError, match='no usable checkpoint') as e:
    train.train_and_evaluate(_digits(**_CONFIG), str(work))
  assert 'step 28' in str(e.value) and '--overwrite' in str(e.value)
  assert _listing(work / 'checkpoints') == before


def test_changed_model_or_data_is_refused_and_overwrite_starts_afresh(finished, tmp_path):
  work = _unfinished_copy(finished, tmp_path)
  changed = _digits(num_epochs=2, encoder='simp', dataset='mnist',
                    data_dir=str(tmp_path / 'no_data'))
  with pytest.raises(UsageError) as e:
    train.train_and_evaluate(changed, str(work))
  message = str(e.value)
  assert "encoder ('mlp' -> 'simp')" in message and "dataset ('digits' -> 'mnist')" in message
  assert '--overwrite' in message and 'num_epochs' not in message
  # Operational fields may change: more epochs, other logging.
  assert resume.decide(_digits(num_epochs=5, log_every_steps=1), str(work), False)
  # A finished run is still refused; --overwrite replaces it.
  with pytest.raises(UsageError, match='finished run'):
    resume.decide(_digits(), str(finished[0]), False)
  results = train.train_and_evaluate(_digits(num_epochs=1), str(work), overwrite=True)
  assert results['final']['epoch'] == 1
  assert checkpoints.committed_steps(work) == [14]
  assert len((work / 'metrics.jsonl').read_text().splitlines()) == 1


def test_injected_nan_stops_naming_the_step_and_last_checkpoint_restores(tmp_path, monkeypatch):
  make = steps.make_train_step

  def make_with_nan(*args, **kwargs):
    step_fn, calls = make(*args, **kwargs), [0]

    def wrapped(state, batch):
      calls[0] += 1
      if calls[0] == 11:  # The step taking state.step from 10 to 11.
        image = batch['image']
        batch = dict(batch, image=jax.device_put(np.full(image.shape, np.nan, np.float32),
                                                 image.sharding))
      return step_fn(state, batch)
    return wrapped

  monkeypatch.setattr(steps, 'make_train_step', make_with_nan)
  work = tmp_path / 'run'
  with pytest.raises(train.NonFiniteError) as e:
    train.train_and_evaluate(_digits(num_epochs=2, checkpoint_every_steps=4), str(work))
  assert 'at step 10' in str(e.value) and 'last good checkpoint is step 8' in str(e.value)
  assert checkpoints.committed_steps(work) == [4, 8]
  assert not (work / 'results.json').exists()
  trained = load_trained(str(work))
  assert trained.step == 8 and int(trained.state.bad_step) == -1
  for leaf in jax.tree.leaves(trained.state.params):
    assert np.all(np.isfinite(np.asarray(leaf)))


def _signal_at(monkeypatch, call, signum):
  """The train step sends `signum` to this process during its `call`-th call."""
  make = steps.make_train_step

  def make_signalling(*args, **kwargs):
    step_fn, calls = make(*args, **kwargs), [0]

    def wrapped(state, batch):
      calls[0] += 1
      if calls[0] == call:
        os.kill(os.getpid(), signum)
      return step_fn(state, batch)
    return wrapped

  monkeypatch.setattr(steps, 'make_train_step', make_signalling)


def test_sigterm_saves_a_checkpoint_and_stops_then_resumes_exactly(finished, tmp_path,
                                                                   monkeypatch):
  work = tmp_path / 'run'
  handler = signal.getsignal(signal.SIGTERM)
  _signal_at(monkeypatch, 19, signal.SIGTERM)  # During epoch 2.
  with pytest.raises(interrupts.Interrupted) as e:
    train.train_and_evaluate(_digits(**_CONFIG), str(work))
  assert e.value.exit_code == 143 and e.value.step == 19
  assert 'rerun the same command to resume' in str(e.value)
  assert max(checkpoints.committed_steps(work)) == 19 and not (work / 'results.json').exists()
  assert signal.getsignal(signal.SIGTERM) is handler  # The handler is put back.
  monkeypatch.undo()
  _same_results(train.train_and_evaluate(_digits(**_CONFIG), str(work)), finished[1])


def test_a_checkpoint_of_an_older_state_restores_with_new_fields_initialised(tmp_path, capsys):
  import flax
  from ohc_jax import models, sharding
  from ohc_jax.run.train_state import create_train_state, make_optimizer

  c = _digits()
  mesh = sharding.make_mesh(c)
  model, tx = models.make_encoder(c), make_optimizer(c)
  state = jax.device_put(create_train_state(c, model, tx, (8, 8, 1), jax.random.key(1)),
                         sharding.replicated(mesh))
  fields = [f.name for f in dataclasses.fields(state)]
  Old = flax.struct.dataclass(type('Old', (), {'__annotations__': {f: object for f in fields[:-1]}}))
  old = Old(**{f: getattr(state, f) for f in fields[:-1]}).replace(step=state.step + 7)
  ckpt = checkpoints.Checkpointer(str(tmp_path), lead=True)
  ckpt.save(old, {'epoch': 1, 'step_in_epoch': 7})
  ckpt.close()
  template = jax.device_put(create_train_state(c, model, tx, (8, 8, 1), jax.random.key(2)),
                            sharding.replicated(mesh))
  restored = checkpoints.Checkpointer(str(tmp_path), read_only=True).restore(template)
  assert restored.step == 7 and f'{fields[-1]} initialised afresh' in capsys.readouterr().err
  np.testing.assert_array_equal(restored.state.params['centroids'], state.params['centroids'])
  np.testing.assert_array_equal(getattr(restored.state, fields[-1]), getattr(template, fields[-1]))
