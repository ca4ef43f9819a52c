"""The feeds: one google/grain pipeline over any source (sources.py: a split in memory, a memory-
mapped file, ArrayRecord records) for training and evaluation, in memory and stream mode alike.

Training: Grain's MapDataset over the epoch's order, `epoch_permutation(n, seed, epoch)` (ours,
not Grain's shuffle, so the order, and every figure measured with it, is unchanged), batched into
global batches (the remainder dropped), sliced from the step a run resumes at (a mid-epoch resume
reads nothing twice), each global batch cut to this process's rows (so the global batches, and
the run, do not depend on the number of processes), each read from the source as one batch and
prefetched by Grain on host threads. Evaluation: the points in order, in global batches, the last
padded. An error a source raises (a record that does not decode: UsageError) comes out of the
iterator at its batch, as raised.

Threads, not worker processes. Grain also prefetches in worker processes (`mp_prefetch`,
`workers` > 0), free of the interpreter lock the train step's dispatch needs. On 2 shared CPU
cores (2026-12-05, CIFAR-10 PNG records, the train step fed for 100 steps, medians of 3
interleaved rounds, docs/benchmarks.md) one worker trained at 77% of memory mode's images/s, one
thread at 77% and two threads at 83%, within the machine's noise (single rounds 77-126%); but
each epoch's iterator spawns its workers anew (importing the package): an epoch's, or a resume's,
first batch came after 7.5-11.5 s instead of 0.05-0.3 s, and the worker held 390 MB more
(launch/stream_benchmark.py, raw records). On the training step, from the cache's raw copy
(2026-12-06, single runs), one worker trained at 8,217 images/s, its resumed epoch's first batch
after 2.2 s, against 8,587 and 9,067 images/s and 0.01 s with one thread (memory mode: 9,447 and
9,451). So threads are the default whatever the host
(`input_threads`, 0: default_threads()); `workers` stays for measuring.

Reading on idle CPU time (`input_priority`, default 'idle'). A streamed batch costs CPU (CIFAR-10,
256 images: 2 ms to read the records, 1 ms to unpack raw images, or 12 ms to decode PNGs), and a
reading thread that takes a core from the train step's parallel kernels stalls them all: on 2 cores
the step lost about twice the reading's CPU time. So the streamed feeds read on threads of Linux's
SCHED_IDLE policy, which run only when no other thread wants a core; the step's idle moments keep
the batches coming. On 2 quiet cores (CIFAR-10 as training streams it: the cache's copy, images
raw; the training step), single interleaved runs gave 7,949 and 8,126 images/s with idle reading
against 7,489 and 7,730 at normal priority (memory mode: 8,292-8,461), and one run of the input
suite (2026-12-06 00:23, medians of 3 rounds) 91.8% of memory mode's images/s against 91.0%
(docs/benchmarks.md). On a machine whose cores other processes keep busy, such threads would wait
for seconds: once a wait for a batch sees this process nearly off the CPU (_next_unless_starved),
the rest of the epoch is read at normal priority. Even so, with 2 busy-looping processes on the 2
cores, idle reading of PNG records trained at 2,157-2,671 images/s against 2,834-3,122 at normal
priority (single A/B runs), and a process sometimes took 15-72 s more to exit: there, set
`input_priority` to 'normal'.
"""

import functools
import math
import os
import queue
import threading
import time
from typing import Iterator, Optional

import numpy as np

from ohc_jax.data.sources import Split

MEMORY_THREADS, MEMORY_PREFETCH = 1, 2  # A split in memory: a batch is one gather.
STREAM_PREFETCH = 4  # Batches read ahead in stream mode.
STARVED_S, STARVED_CPU = 0.1, 0.25  # When reading on idle CPU time starves (seconds, cores).
_THREAD = threading.local()
_END = object()


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the training points in an epoch: a function of (seed, epoch) alone."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def default_threads() -> int:
  """Half the host's cores, at least one: the rest stay with the train step. On 2 CPU cores,
  CIFAR-10 from raw records trained at 91-92% of memory mode's images/s with one thread and 82-90%
  with two (docs/benchmarks.md, on the input suite's slower step of before 2026-12-06); on the
  training step, from the cache's raw copy, 8,031 and 8,684 images/s with one thread against 8,210
  and 8,398 with two (memory mode 8,589 and 8,743; two interleaved rounds, 2026-12-06): no
  difference this machine's noise lets one see."""
  return max(1, (os.cpu_count() or 2) // 2)


def _rows_of_process(rows: np.ndarray, offset: int, size: int) -> np.ndarray:
  return rows[offset:offset + size]


def _set_policy(thread: int, policy: str) -> None:
  """Puts a thread (0: the calling one) on Linux's scheduling policy `policy` ('SCHED_IDLE',
  'SCHED_OTHER'); where the policy is missing or the change refused (leaving SCHED_IDLE needs
  root, CAP_SYS_NICE or an RLIMIT_NICE of 20), or the thread is gone, it stays as it was."""
  try:
    os.sched_setscheduler(thread, getattr(os, policy), os.sched_param(0))
  except (AttributeError, OSError):
    pass


def _yield_cpu() -> None:
  """Puts the calling thread on SCHED_IDLE, once: it then runs only on CPU time no other thread
  wants."""
  if not getattr(_THREAD, 'idle', False):
    _THREAD.idle = True
    _set_policy(0, 'SCHED_IDLE')


class _Abandoned(Exception):
  """A read given up: its iterator was dropped."""


class _IdleRead:
  """A source's read on idle CPU time (_yield_cpu), not begun once abandoned."""

  def __init__(self, read):
    self._read, self._abandoned, self._threads = read, threading.Event(), set()

  def abandon(self) -> None:
    """Drops the reads not begun; the threads of those under way are put back to normal priority
    where the system allows it (_set_policy): on a busy machine they could otherwise wait long
    for a core, and the interpreter waits for them when it exits."""
    self._abandoned.set()
    for thread in list(self._threads):
      _set_policy(thread, 'SCHED_OTHER')

  def __call__(self, rows: np.ndarray) -> dict:
    if self._abandoned.is_set():
      raise _Abandoned
    _yield_cpu()
    self._threads.add(threading.get_native_id())
    return self._read(rows)


def _read_rows(read, rows: np.ndarray) -> dict:
  return read(rows)


def _grain_iterator(batches, read, batch_of, threads: int, prefetch: int, workers: int = 0):
  """An iterator over batch_of(read, b) of each element b of a Grain MapDataset, in order,
  `prefetch` ahead, computed on `threads` host threads, or in `workers` processes."""
  import grain
  ahead = batches.map(functools.partial(batch_of, read)).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
  if workers:
    ahead = ahead.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=max(1, prefetch // workers)))
  return iter(ahead)


class _Pump:
  """An iterator's elements handed over by a thread of its own, so the consumer can stop waiting
  (`get` with a timeout) while the iterator's own threads are kept off the CPU; each element is
  (value, None), (None, error) or (_END, None). `close` closes the iterator (its reads not yet
  begun are dropped) and stops the thread."""

  def __init__(self, iterator):
    self._iterator, self._queue, self._stop = iterator, queue.Queue(maxsize=1), threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True, name='ohc-feed-pump')
    self._thread.start()

  def _run(self):
    try:
      for value in self._iterator:
        if not self._put((value, None)):
          return
      self._put((_END, None))
    except Exception as e:  # pylint: disable=broad-except  (handed to the consumer, raised there)
      self._put((None, e))
    finally:
      self._iterator.close()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.05)
        return True
      except queue.Full:
        pass
    return False

  def get(self, timeout: float):
    """The next (value, error), or None if none came within `timeout` seconds (inf: waits)."""
    try:
      return self._queue.get(timeout=max(timeout, 0.0) if timeout < math.inf else None)
    except queue.Empty:
      return None

  def close(self):
    self._stop.set()
    self._iterator.close()  # Not after the read under way: on a busy machine it may take long.


def _next_unless_starved(pump: _Pump):
  """The pump's next (value, error), or None once a wait of STARVED_S saw this process use less
  than STARVED_CPU of a core: the step done and its batch still unread, other processes holding
  the cores. (While a step computes, the process keeps a core or more busy; once it is done, the
  readers have the idle cores.)"""
  while True:
    wall, cpu = time.perf_counter(), time.process_time()
    item = pump.get(STARVED_S)
    if item is not None:
      return item
    if time.process_time() - cpu < STARVED_CPU * (time.perf_counter() - wall):
      return None


def _prefetched(batches, read, threads: int, prefetch: int, workers: int = 0,
                yield_cpu: bool = False, batch_of=_read_rows) -> Iterator:
  """batch_of(read, b) of each element b of a Grain MapDataset, `read` a source's read, in order
  (_grain_iterator), closed when done or dropped. yield_cpu: read on idle CPU time (_IdleRead),
  so the reading gives way to the train step instead of slowing its parallel kernels, until the
  readers starve (_next_unless_starved); the rest is then read at normal priority, as without
  yield_cpu."""
  done = 0
  if yield_cpu:
    idle = _IdleRead(read)
    pump = _Pump(_grain_iterator(batches, idle, batch_of, threads, prefetch))
    try:
      while True:
        item = _next_unless_starved(pump)
        if item is None:  # Read the rest at normal priority.
          break
        value, error = item
        if error is not None:
          raise error
        if value is _END:
          return
        yield value
        done += 1
    finally:
      idle.abandon()
      pump.close()
  iterator = _grain_iterator(batches[done:], read, batch_of, threads, prefetch, workers)
  try:
    yield from iterator
  finally:  # Also when the consumer stops early: no read left queued.
    iterator.close()


class TrainFeed:
  """Per-epoch batches of one process's rows of each global batch, read from a source (a Split or
  a streamed source) through the Grain pipeline; `threads` host threads (or `workers` processes)
  read `prefetch` batches ahead, on idle CPU time first with yield_cpu (_prefetched)."""

  def __init__(self, source, global_batch: int, seed: int, process_index: int = 0,
               process_count: int = 1, threads: int = MEMORY_THREADS,
               prefetch: int = MEMORY_PREFETCH, workers: int = 0, yield_cpu: bool = False):
    self._source, self._seed, self._global_batch = source, seed, global_batch
    local = global_batch // process_count
    self._rows = functools.partial(_rows_of_process, offset=process_index * local, size=local)
    self._threads, self._prefetch, self._workers = threads, prefetch, workers
    self._yield_cpu = yield_cpu and not workers  # Worker processes keep their priority.
    self.steps_per_epoch = len(source) // global_batch

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
    """Batches {'image', 'label'} of the epoch from start_step on (drop remainder)."""
    import grain
    order = grain.MapDataset.source(epoch_permutation(len(self._source), self._seed, epoch))
    batches = order.batch(self._global_batch, drop_remainder=True)[start_step:]
    return _prefetched(batches.map(self._rows), self._source.read, self._threads,
                       self._prefetch, self._workers, self._yield_cpu)


def train_feed(source, global_batch: int, seed: int, process_index: int = 0,
               process_count: int = 1, threads: int = 0, yield_cpu: bool = True) -> TrainFeed:
  """The training feed of a split in memory (one thread, two batches ahead) or a streamed source
  (`threads` host threads, 0: default_threads(), STREAM_PREFETCH ahead, on idle CPU time first
  with yield_cpu): the same batches."""
  if isinstance(source, Split):
    return TrainFeed(source, global_batch, seed, process_index, process_count)
  return TrainFeed(source, global_batch, seed, process_index, process_count,
                   threads or default_threads(), STREAM_PREFETCH, yield_cpu=yield_cpu)


def pad_rows(array: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """(array with zero rows appended up to `size` rows, mask of its real rows): batches keep one
  shape, so the jitted steps compile once."""
  real = np.arange(size) < len(array)
  if len(array) < size:
    array = np.concatenate([array, np.zeros((size - len(array),) + array.shape[1:], array.dtype)])
  return array, real


def read_rows(source, rows: np.ndarray) -> dict:
  """{'image', 'label'} of some rows of a source."""
  return source.read(np.asarray(rows))


def sample_images(source, sample: Optional[np.ndarray]):
  """The inputs of the rows `sample` (None: all) of a source."""
  if sample is None and isinstance(source, Split):
    return source.images
  return read_rows(source, np.arange(len(source)) if sample is None else sample)['image']


def eval_rows(n: int, global_batch: int, process_index: int,
              process_count: int) -> Iterator[tuple[slice, int]]:
  """(this process's rows of each global batch of n points in order, real points in the batch)."""
  local = global_batch // process_count
  for start in range(0, n, global_batch):
    valid = min(global_batch, n - start)
    lo = start + process_index * local
    yield slice(lo, min(lo + local, start + valid)), valid


def _eval_batch(read, rows: np.ndarray, offset: int, local: int) -> tuple[dict, int]:
  """(this process's rows of a global batch of `rows`, read and padded to `local`, with 'valid'
  marking the real ones; len(rows))."""
  batch = read(rows[offset:offset + local])
  images, real = pad_rows(batch.pop('image'), local)
  return {'image': images, **{k: pad_rows(v, local)[0] for k, v in batch.items()},
          'valid': real}, len(rows)


def eval_batches(source, global_batch: int, process_index: int = 0, process_count: int = 1,
                 threads: int = 0, yield_cpu: bool = True) -> Iterator[tuple[dict, int]]:
  """The whole split (a source) in order, in global batches (the last padded): yields (this
  process's rows of the batch, {'image', 'label', 'valid'} with 'valid' marking the real ones
  (and 'skipped' where the source marks them), number of real points in the global batch); read
  through the Grain pipeline, a streamed source on `threads` host threads (0: default_threads()),
  on idle CPU time first with yield_cpu."""
  import grain
  local = global_batch // process_count
  batch_of = functools.partial(_eval_batch, offset=process_index * local, local=local)
  batches = grain.MapDataset.range(len(source)).batch(global_batch)
  if isinstance(source, Split):
    return _prefetched(batches, source.read, MEMORY_THREADS, MEMORY_PREFETCH, batch_of=batch_of)
  return _prefetched(batches, source.read, threads or default_threads(), STREAM_PREFETCH,
                     yield_cpu=yield_cpu, batch_of=batch_of)
