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
(launch/stream_benchmark.py, raw records). So threads are the default whatever the host
(`input_threads`, 0: default_threads()); `workers` stays for measuring.
"""

import functools
import os
from typing import Iterator, Optional

import numpy as np

from ohc_jax.data.sources import Split

MEMORY_THREADS, MEMORY_PREFETCH = 1, 2  # A split in memory: a batch is one gather.
STREAM_PREFETCH = 4  # Batches read ahead in stream mode.


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the training points in an epoch: a function of (seed, epoch) alone."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def default_threads() -> int:
  """Half the host's cores, at least one: the rest stay with the train step (on 2 CPU cores,
  CIFAR-10 from raw records trained at 91-92% of memory mode's images/s with one thread, 82-90%
  with two: docs/benchmarks.md)."""
  return max(1, (os.cpu_count() or 2) // 2)


def _rows_of_process(rows: np.ndarray, offset: int, size: int) -> np.ndarray:
  return rows[offset:offset + size]


def _prefetched(dataset, threads: int, prefetch: int, workers: int = 0) -> Iterator:
  """A Grain MapDataset's elements in order, `prefetch` ahead, computed on `threads` host
  threads, or in `workers` processes; the iterator (and its workers) closed when done."""
  import grain
  ahead = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                    prefetch_buffer_size=prefetch))
  if workers:
    ahead = ahead.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=max(1, prefetch // workers)))
  iterator = iter(ahead)
  try:
    yield from iterator
  finally:  # Also when the consumer stops early: no read left queued.
    iterator.close()


class TrainFeed:
  """Per-epoch batches of one process's rows of each global batch, read from a source (a Split or
  a streamed source) through the Grain pipeline; `threads` host threads (or `workers` processes)
  read `prefetch` batches ahead."""

  def __init__(self, source, global_batch: int, seed: int, process_index: int = 0,
               process_count: int = 1, threads: int = MEMORY_THREADS,
               prefetch: int = MEMORY_PREFETCH, workers: int = 0):
    self._source, self._seed, self._global_batch = source, seed, global_batch
    local = global_batch // process_count
    self._rows = functools.partial(_rows_of_process, offset=process_index * local, size=local)
    self._threads, self._prefetch, self._workers = threads, prefetch, workers
    self.steps_per_epoch = len(source) // global_batch

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
    """Batches {'image', 'label'} of the epoch from start_step on (drop remainder)."""
    import grain
    order = grain.MapDataset.source(epoch_permutation(len(self._source), self._seed, epoch))
    batches = order.batch(self._global_batch, drop_remainder=True)[start_step:]
    return _prefetched(batches.map(self._rows).map(self._source.read), self._threads,
                       self._prefetch, self._workers)


def train_feed(source, global_batch: int, seed: int, process_index: int = 0,
               process_count: int = 1, threads: int = 0) -> TrainFeed:
  """The training feed of a split in memory (one thread, two batches ahead) or a streamed source
  (`threads` host threads, 0: default_threads(), STREAM_PREFETCH ahead): the same batches."""
  if isinstance(source, Split):
    return TrainFeed(source, global_batch, seed, process_index, process_count)
  return TrainFeed(source, global_batch, seed, process_index, process_count,
                   threads or default_threads(), STREAM_PREFETCH)


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


def _eval_batch(rows: np.ndarray, read, offset: int, local: int) -> tuple[dict, int]:
  """(this process's rows of a global batch of `rows`, read and padded to `local`, with 'valid'
  marking the real ones; len(rows))."""
  batch = read(rows[offset:offset + local])
  images, real = pad_rows(batch.pop('image'), local)
  return {'image': images, **{k: pad_rows(v, local)[0] for k, v in batch.items()},
          'valid': real}, len(rows)


def eval_batches(source, global_batch: int, process_index: int = 0, process_count: int = 1,
                 threads: int = 0) -> Iterator[tuple[dict, int]]:
  """The whole split (a source) in order, in global batches (the last padded): yields (this
  process's rows of the batch, {'image', 'label', 'valid'} with 'valid' marking the real ones
  (and 'skipped' where the source marks them), number of real points in the global batch); read
  through the Grain pipeline, a streamed source on `threads` host threads (0: default_threads())."""
  import grain
  local = global_batch // process_count
  read = functools.partial(_eval_batch, read=source.read, offset=process_index * local,
                           local=local)
  batches = grain.MapDataset.range(len(source)).batch(global_batch).map(read)
  if isinstance(source, Split):
    return _prefetched(batches, MEMORY_THREADS, MEMORY_PREFETCH)
  return _prefetched(batches, threads or default_threads(), STREAM_PREFETCH)
