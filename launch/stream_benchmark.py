r"""Measures an input feed alone (no training): images/s, the cost of starting an epoch at 10% and
at 90% of it, and the process's peak RSS. One feed per process, so each peak is its own.

  python launch/stream_benchmark.py stream /tmp/tfds_ar/cifar10/3.0.2
  python launch/stream_benchmark.py memory /work/shared/data/tfds   # TrainFeed over tfds cifar10
  python launch/stream_benchmark.py stream DIR 256 150 1 1   # BATCH STEPS THREADS WORKERS

WORKERS > 0 reads in Grain's worker processes (mp_prefetch) instead of threads alone. Prints one
JSON line; peak_rss_mb is this process's, children_peak_rss_mb its largest worker's.
"""

import json
import os
import resource
import sys
import time

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _feed(mode: str, where: str, batch: int, threads: int, workers: int):
  from ohc_jax.data import input_pipeline, pipeline, sources
  if mode == 'stream':
    return pipeline.TrainFeed(sources.ImageSource(where, 'train'), batch, seed=0, threads=threads,
                              prefetch=pipeline.STREAM_PREFETCH, workers=workers)
  config = ml_collections.ConfigDict(dict(
      dataset='cifar10', data_dir=where, download=False, protocol='holdout', max_examples=0,
      imbalance=0, num_clusters=10, seed=0))
  return pipeline.TrainFeed(input_pipeline.load(config).train, batch, seed=0)


def main(mode: str, where: str, batch: int = 256, steps: int = 150, threads: int = 2,
         workers: int = 0) -> None:
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # Grain's worker processes read its flags.
  start = time.perf_counter()
  feed = _feed(mode, where, int(batch), int(threads), int(workers))
  result = {'mode': mode, 'data': where, 'setup_s': round(time.perf_counter() - start, 2),
            'steps_per_epoch': feed.steps_per_epoch}
  for fraction in (0.1, 0.9):  # Time from asking for step s to holding its batch.
    start = time.perf_counter()
    next(iter(feed.epoch(1, int(fraction * feed.steps_per_epoch))))
    result[f'first_batch_at_{fraction:.0%}_s'] = round(time.perf_counter() - start, 3)
  batches = feed.epoch(0)
  next(batches)  # Threads started, the pipeline full.
  start, seen = time.perf_counter(), 0
  for _, b in zip(range(int(steps)), batches):
    seen += len(b['label'])
  result['images_per_s'] = round(seen / (time.perf_counter() - start))
  batches.close()
  result['peak_rss_mb'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
  result['children_peak_rss_mb'] = round(
      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
  print(json.dumps(result))


if __name__ == '__main__':
  main(*sys.argv[1:])
