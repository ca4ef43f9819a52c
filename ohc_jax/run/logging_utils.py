"""A run's scalar logs: TensorBoard event files and JSON lines, kept consistent across resumes.

- `WORKDIR/metrics.jsonl`: one JSON object per epoch (the evaluation record), as before.
- `WORKDIR/steps.jsonl`: one JSON object per `log_every_steps` training steps: `step`, `epoch`,
  `loss` (of that step), `images_per_s` (since the previous line), `batch_clusters` (clusters the
  step's batch used) and the method's own counts of that step (entropy_reference:
  `refused_entries`, see ohc_jax.core.methods).
- `WORKDIR/tensorboard/`: the same scalars, `train/*` per logged step and `eval/*` per epoch, all
  on the axis of the global step (`tensorboard --logdir WORKDIR/tensorboard`).

On resume from step S the JSON files are cut back to what the checkpoint knows (epochs in its
history, steps <= S) and TensorBoard is told to drop the old events after S (purge_step), so that a
resumed run's logs look like those of an uninterrupted one.
"""

import json
import math
import os
from typing import Optional

from ohc_jax.errors import writing

# Epoch-record fields that are scalars worth a TensorBoard curve.
_EPOCH_SCALARS = ('train_loss', 'train_images_per_s', 'acc', 'nmi', 'ari', 'kl_star',
                  'num_nonempty', 'linear_probe_acc', 'knn_probe_acc')


def _cut_jsonl(path: str, keep) -> None:
  """Keeps the lines of a JSON-lines file for which keep(record) holds (unreadable lines go)."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if keep(record):
        kept.append(line if line.endswith('\n') else line + '\n')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(kept)
  os.replace(tmp, path)


class MetricWriter:
  """Writes the logs of process 0 (on other processes every method does nothing)."""

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: Optional[int] = None,
               history: Optional[list] = None):
    self._enabled = enabled
    self._tb = None
    if not enabled:
      return
    with writing(workdir, 'the logs'):
      self._open(workdir, resume_step, history)

  def _open(self, workdir: str, resume_step: Optional[int], history: Optional[list]) -> None:
    os.makedirs(workdir, exist_ok=True)
    self._metrics = os.path.join(workdir, 'metrics.jsonl')
    self._steps = os.path.join(workdir, 'steps.jsonl')
    if resume_step is None:
      for path in (self._metrics, self._steps):
        open(path, 'w').close()
    else:
      with open(self._metrics + '.tmp', 'w') as f:
        for record in history or []:
          f.write(json.dumps(record) + '\n')
      os.replace(self._metrics + '.tmp', self._metrics)
      _cut_jsonl(self._steps, lambda r: r.get('step', 0) <= resume_step)
    try:
      from tensorboardX import SummaryWriter
    except ImportError:  # TensorBoard logs are optional: the JSON lines are always written.
      return
    purge = None if resume_step is None else resume_step + 1
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'), purge_step=purge,
                             flush_secs=30)

  def write_step(self, step: int, scalars: dict) -> None:
    if not self._enabled:
      return
    with writing(self._steps, 'the step logs'):
      with open(self._steps, 'a') as f:
        f.write(json.dumps({'step': step, **scalars}) + '\n')
    if self._tb is not None:
      with writing(self._tb.logdir, 'the TensorBoard logs'):
        for key, value in scalars.items():
          if key != 'epoch' and isinstance(value, (int, float)) and math.isfinite(value):
            self._tb.add_scalar(f'train/{key}', value, step)

  def write_epoch(self, record: dict) -> None:
    if not self._enabled:
      return
    with writing(self._metrics, 'the evaluation logs'):
      with open(self._metrics, 'a') as f:
        f.write(json.dumps(record) + '\n')
    if self._tb is not None:
      with writing(self._tb.logdir, 'the TensorBoard logs'):
        self._tb_epoch(record)

  def _tb_epoch(self, record: dict) -> None:
    step = record['step']
    for key in _EPOCH_SCALARS:
      value = record.get(key)
      if isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.add_scalar(f'eval/{key}' if key not in ('train_loss', 'train_images_per_s')
                            else f'epoch/{key}', value, step)
    self._tb.add_scalar('epoch/epoch', record['epoch'], step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      tb, self._tb = self._tb, None
      with writing(tb.logdir, 'the TensorBoard logs'):
        tb.close()
