"""Evaluation over a split held in memory or streamed: metrics accumulated batch by batch, the
outputs of a bounded, seeded sample kept for probes, plots and covariances."""

import dataclasses
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from ohc_jax import sharding
from ohc_jax.core import metrics
from ohc_jax import data as data_lib
from ohc_jax.run import interrupts
from ohc_jax.errors import UsageError


@dataclasses.dataclass
class Evaluation:
  """One pass over an evaluation split: the metrics' accumulator (contingency table and soft sizes,
  which do not grow with the split) and the eval step's outputs with each point's label for the
  rows kept (`sample`; all by default), for probes, plots and re-estimating covariances."""
  accumulator: metrics.Accumulator
  outputs: dict
  skipped: int = 0  # Records left out that did not decode (config.skip_bad_records).


def evaluate(eval_step, state, split, config, mesh, sample: Optional[np.ndarray] = None):
  """Point-wise argmin labels over a split (combination assignment batch by batch with
  config.constrained_eval), batch by batch; the outputs kept (rows `sample`, sorted, or all) are
  gathered to every process as NumPy arrays."""
  acc, kept, start, skipped = metrics.Accumulator(config.num_clusters), [], 0, 0
  batches, failure = data_lib.eval_batches(split, config.eval_batch_size,
                                           jax.process_index(), jax.process_count(),
                                           config.input_threads,
                                           config.input_priority == 'idle'), None
  for _, valid in data_lib.eval_rows(len(split), config.eval_batch_size,
                                     jax.process_index(), jax.process_count()):
    try:
      batch = next(batches)[0] if failure is None else _blank(split, config)
    except UsageError as e:  # Several processes: blank batches, then all stop together.
      if jax.process_count() == 1:
        raise
      batch, failure = _blank(split, config), e
    host = {key: batch.pop(key) for key in ('label', 'skipped') if key in batch}
    out = eval_step(state, sharding.to_global(batch, mesh))
    out = multihost_utils.process_allgather({**out, **host}, tiled=True)
    if 'constrained' in out:
      out['cluster'] = out.pop('constrained')
    keep = ~out.pop('skipped') if 'skipped' in out else None  # Stand-ins for bad records.
    acc.add(out['label'], out['cluster'], out['soft'], valid, keep)
    rows = (np.arange(valid) if sample is None else
            sample[(sample >= start) & (sample < start + valid)] - start)
    if keep is not None:
      rows, skipped = rows[keep[rows]], skipped + int((~keep[:valid]).sum())
    kept.append({key: value[rows] for key, value in out.items()})
    start += valid
  interrupts.agree_on_failure(failure)
  return Evaluation(acc, {key: np.concatenate([k[key] for k in kept]) for key in kept[0]},
                    skipped)


def _blank(split, config) -> dict:
  """A batch of no points, with the keys the other processes' batches have."""
  local = config.eval_batch_size // jax.process_count()
  return {'image': np.zeros((local,) + tuple(split.shape[1:]), split.dtype),
          'label': np.zeros(local, np.int64), 'valid': np.zeros(local, bool),
          **({'skipped': np.zeros(local, bool)} if getattr(split, 'marks_skipped', False) else {})}


def eval_sample(config, n: int) -> Optional[np.ndarray]:
  """The evaluation rows whose outputs are kept (config.eval_sample of the n, seeded, sorted), or
  None for all of them (eval_sample 0: all in memory mode, STREAM_EVAL_SAMPLE streaming)."""
  size = config.eval_sample or (STREAM_EVAL_SAMPLE if data_lib.input_mode(config) == 'stream'
                                else n)
  if size >= n:
    return None
  return np.sort(np.random.default_rng([config.seed, 11]).choice(n, size, replace=False))


STREAM_EVAL_SAMPLE = 10_000


def collapse_warning(record: dict, config) -> Optional[str]:
  """A warning when an evaluation put every point in one cluster: such a run's labels say nothing,
  yet it ends normally (costs that underflow float32 all tie at 0: every argmin is cluster 0)."""
  if record.get('num_nonempty') != 1:
    return None
  return (f'the run collapsed: its evaluation at step {record["step"]} put every point in one of '
          f'its {config.num_clusters} clusters; its labels say nothing (check --config.sigma, now '
          f'{config.sigma:g}, and --config.method, now {config.method})')
