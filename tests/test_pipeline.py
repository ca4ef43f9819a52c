"""The data package's one feed (pipeline.py, on Grain) over every kind of source, and its surface."""

import ast
import os
import threading
import time

import numpy as np
import pytest

import ohc_jax
from ohc_jax.data import pipeline, sources
from ohc_jax.errors import UsageError
from batches import assert_same_batches


def _split(n=103, seed=0):
  rng = np.random.default_rng(seed)
  return sources.Split(rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8),
                       rng.integers(0, 5, n).astype(np.int64))


class _Failing(sources.ArraySource):
  """Rows at or past `bad` do not read."""

  def __init__(self, images, labels, bad):
    super().__init__(images, labels)
    self.bad = bad

  def read(self, rows):
    if (rows >= self.bad).any():
      raise UsageError(f'record {int(rows[rows >= self.bad][0])} does not decode')
    return super().read(rows)



def test_one_pipeline_gives_the_same_batches_over_a_split_and_a_source():
  """Memory mode's Split and a streamed source read through the same Grain pipeline: the same
  batches, threads or not, from any step."""
  split = _split()
  source = sources.ArraySource(split.images, split.labels)
  for threads in (0, 1, 3):
    for epoch, start in ((1, 0), (2, 5)):
      assert_same_batches(
          pipeline.TrainFeed(source, 16, 7, threads=threads, prefetch=3).epoch(epoch, start),
          pipeline.TrainFeed(split, 16, 7).epoch(epoch, start))


def test_a_read_error_comes_out_of_the_feed_as_raised_at_its_batch():
  """A record that does not decode (UsageError) reaches the training loop as itself, after the
  batches before it, whatever the threads reading ahead."""
  split = _split(64)
  order = pipeline.epoch_permutation(64, 0, 1).reshape(4, 16)
  bad = int(order[2].min())  # First met in batch 2 (the rows >= bad are in it or later).
  first = min(step for step in range(4) if (order[step] >= bad).any())
  for threads, yield_cpu in ((1, False), (2, False), (1, True)):
    batches = pipeline.TrainFeed(_Failing(split.images, split.labels, bad), 16, 0,
                                 threads=threads, prefetch=4, yield_cpu=yield_cpu).epoch(1)
    for _ in range(first):
      next(batches)
    with pytest.raises(UsageError, match=r'record \d+ does not decode'):
      next(batches)
  with pytest.raises(UsageError, match='does not decode'):
    list(pipeline.eval_batches(_Failing(split.images, split.labels, 40), 16, threads=2))


def _idle_policy_available() -> bool:
  """Whether a thread here may put itself on SCHED_IDLE (Linux; a sandbox may refuse it)."""
  ok = []
  def probe():
    try:
      os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
      ok.append(True)
    except (AttributeError, OSError):
      pass
  thread = threading.Thread(target=probe)
  thread.start()
  thread.join()
  return bool(ok)


class _Policies(sources.ArraySource):
  """Notes the scheduling policy of the thread that reads each batch; with `idle_gate`, a read on
  an idle-priority thread first waits for the gate (a machine with no idle CPU time)."""

  def __init__(self, split, idle_gate=None):
    super().__init__(split.images, split.labels)
    self.policies, self.idle_gate = [], idle_gate

  def read(self, rows):
    policy = os.sched_getscheduler(0)
    self.policies.append(policy)
    if self.idle_gate is not None and policy == os.SCHED_IDLE:
      self.idle_gate.wait(timeout=60)
    return super().read(rows)


def _eval(source):
  return [batch for batch, _ in pipeline.eval_batches(source, 16)]


needs_idle_policy = pytest.mark.skipif(not _idle_policy_available(),
                                       reason='no SCHED_IDLE for threads here')


@needs_idle_policy
def test_streamed_batches_are_read_on_idle_cpu_time_and_are_the_same():
  """A streamed source is read by threads on SCHED_IDLE, so reading gives way to the train step;
  memory mode's gathers are not moved; the batches are the same either way."""
  split = _split()
  source = _Policies(split)
  assert_same_batches(pipeline.train_feed(source, 16, 7).epoch(1, 2),
                      pipeline.TrainFeed(split, 16, 7).epoch(1, 2))
  assert_same_batches(_eval(source), _eval(split))
  assert source.policies and set(source.policies) == {os.SCHED_IDLE}
  normal = _Policies(split)
  list(pipeline.train_feed(normal, 16, 7, yield_cpu=False).epoch(1))
  assert os.SCHED_IDLE not in normal.policies


@needs_idle_policy
def test_a_feed_starved_of_idle_cpu_reads_the_rest_at_normal_priority(monkeypatch):
  """On a machine with no idle CPU time, reads on SCHED_IDLE threads never end; once the
  consumer has waited STARVED_S, the feed reads from the batch it waits for on threads of normal
  priority: every batch, once, in order."""
  monkeypatch.setattr(pipeline, 'STARVED_S', 0.05)
  split, gate = _split(), threading.Event()
  try:
    for start in (0, 3):
      source = _Policies(split, idle_gate=gate)
      assert_same_batches(pipeline.train_feed(source, 16, 7).epoch(1, start),
                          pipeline.TrainFeed(split, 16, 7).epoch(1, start))
      assert os.SCHED_IDLE in source.policies and os.SCHED_OTHER in source.policies
    source = _Policies(split, idle_gate=gate)
    assert_same_batches(_eval(source), _eval(split))
  finally:
    gate.set()


@needs_idle_policy
def test_a_feed_dropped_early_stops_its_pump():
  split = _split()
  batches = pipeline.train_feed(sources.ArraySource(split.images, split.labels), 16, 7).epoch(1)
  next(batches)
  batches.close()
  for _ in range(200):
    if not any(t.name == 'ohc-feed-pump' for t in threading.enumerate()):
      break
    time.sleep(0.05)
  assert not any(t.name == 'ohc-feed-pump' for t in threading.enumerate())


def test_eval_batches_cover_the_split_in_order_padded():
  split = _split(37)
  for count in (1, 2):
    for index in range(count):
      got = list(pipeline.eval_batches(split, 16, index, count))
      assert [valid for _, valid in got] == [16, 16, 5]
      local = 16 // count
      for (batch, _), (rows, _) in zip(got, pipeline.eval_rows(37, 16, index, count)):
        real = rows.stop - rows.start if rows.stop > rows.start else 0
        assert batch['image'].shape == (local, 4, 4, 3) and batch['valid'].sum() == real
        np.testing.assert_array_equal(batch['label'][:real], split.labels[rows])


@pytest.mark.slow  # Starts a worker process.
def test_worker_processes_give_the_batches_of_threads():
  """Grain's mp_prefetch (workers > 0) feeds the very batches the threads do."""
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # Grain reads its flags in the workers' parent; tests parse none.
  split = _split()
  source = sources.ArraySource(split.images, split.labels)
  batches = pipeline.TrainFeed(source, 16, 3, threads=1, prefetch=4, workers=1).epoch(1, 2)
  assert_same_batches(batches, pipeline.TrainFeed(split, 16, 3).epoch(1, 2))


def test_the_package_uses_the_data_package_through_its_surface():
  """Outside ohc_jax/data/, modules import `ohc_jax.data` (its __init__: load, the feeds, the
  evaluation batches) and the readers (predict's inputs), no other part of it."""
  root = os.path.dirname(ohc_jax.__file__)
  reached = set()
  for folder, _, files in os.walk(root):
    if os.path.relpath(folder, root).split(os.sep)[0] == 'data':
      continue
    for f in files:
      if f.endswith('.py'):
        for node in ast.walk(ast.parse(open(os.path.join(folder, f)).read())):
          if isinstance(node, ast.ImportFrom) and node.module == 'ohc_jax':
            reached |= {f'ohc_jax.{a.name}' for a in node.names if a.name == 'data'}
          elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('ohc_jax.data'):
            reached |= {f'{node.module}.{a.name}' if node.module == 'ohc_jax.data' else
                        node.module for a in node.names}
  assert reached == {'ohc_jax.data', 'ohc_jax.data.readers'}
