"""The memory a config needs, estimated from its fields before anything is built or loaded, so that
a size that cannot fit is refused with one line naming its field rather than dying out of memory.

The estimate is a lower bound: it counts only arrays a run cannot do without, each once, in
float32 (4 bytes a value):
- the state: each parameter with its gradient and Adam's two moments (4 values): the centroids
  (K x nz; with a learned or estimated covariance K x nz more, or K x nz x nz), and the encoder's
  last layer (nz) or, for `mlp`, its hidden layer (hidden_dim x (input + nz + 2));
- a training batch (batch_size over the processes) and an evaluation batch: per example its input
  (image_size^2 values when resizing, else at least 1), hidden layer (`mlp`), encoding (nz) and cost
  row (K; evaluation also keeps the soft assignment, K more).
Convolution feature maps, XLA's temporaries and the data set itself are left out, so the true need
is larger (the default job: estimate 1.5 MB, peak host memory 0.7 GB, mostly the runtime). A config
is refused only when even this bound exceeds the memory there is: a refusal is certain, never a
guess, and every config of configs/ passes on a 24 GB host.
"""

import dataclasses
import math
import os

from ohc_jax.errors import UsageError

_VALUE = 4  # Bytes of a float32.
_STATE_COPIES = 4  # A parameter, its gradient and Adam's two moments.


@dataclasses.dataclass(frozen=True)
class Need:
  """`what` takes `bytes`; `field` is the config field whose size drives it most."""
  what: str
  bytes: int
  field: str


def _need(what: str, count_field: str, count: int, per_item: dict, copies: int = 1) -> Need:
  """copies x count x sum(per_item) values; the field blamed is the larger of the count and the
  largest item."""
  biggest = max(per_item, key=per_item.get)
  field = count_field if count >= per_item[biggest] else biggest
  return Need(what, copies * count * sum(per_item.values()) * _VALUE, field)


def needs(config, processes: int = 1, devices: int = 1) -> list[Need]:
  """What a process of a run of `processes` needs, each of its `devices` holding the state and its
  share of the batches (devices=1: the host's need, the whole local batch on it)."""
  k, nz = int(config.num_clusters), int(config.latent_dim)
  hidden = int(config.hidden_dim) if config.encoder == 'mlp' else 0
  inputs = int(config.image_size) ** 2 or 1  # Values of one input: N x N x (at least 1 channel).
  per_centroid = {'latent_dim': nz * {'learned_diagonal': 2, 'estimated': nz + 1}.get(
      config.covariance, 1)}
  result = [_need('the centroids with their gradients and Adam\'s moments', 'num_clusters',
                  k, per_centroid, _STATE_COPIES)]
  if hidden:
    result.append(_need('the mlp encoder\'s hidden layer with its gradients and Adam\'s moments',
                        'hidden_dim', hidden,
                        {'image_size': inputs, 'latent_dim': nz, 'hidden_dim': 2},
                        _STATE_COPIES))
  else:
    result.append(_need('the encoder\'s last layer with its gradients and Adam\'s moments',
                        'latent_dim', 1, {'latent_dim': nz}, _STATE_COPIES))
  share = processes * devices
  for what, field, extra in (('a training batch', 'batch_size', 0),
                             ('an evaluation batch', 'eval_batch_size', k)):
    per_example = {'image_size': inputs, 'hidden_dim': hidden, 'latent_dim': nz,
                   'num_clusters': k + extra}
    result.append(_need(f'{what} (inputs, hidden layer, encodings, costs)', field,
                        math.ceil(int(config[field]) / share), per_example))
  return result


def host_memory() -> int:
  """Bytes of physical memory, or of the cgroup's limit where that is lower."""
  total = os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  for path in ('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes'):
    try:
      with open(path) as f:
        limit = f.read().strip()
    except OSError:
      continue
    if limit.isdigit():
      total = min(total, int(limit))
  return total


def refuse_if_too_big(config, available: int, where: str, **share) -> None:
  """Raises UsageError naming the field to lower when needs(config, **share) exceed `available`
  bytes of `where` ('this host', 'each device')."""
  found = needs(config, **share)
  total = sum(n.bytes for n in found)
  if total <= available:
    return
  worst = max(found, key=lambda n: n.bytes)
  raise UsageError(f'the config needs at least {_gb(total)} of memory on {where}, which has '
                   f'{_gb(available)}: {worst.what} alone takes {_gb(worst.bytes)}; set a '
                   f'smaller --config.{worst.field}= (now {config[worst.field]})')


def _gb(size: int) -> str:
  gb = size / 2**30
  return f'{gb:,.0f} GB' if gb >= 100 else f'{gb:.3g} GB'
