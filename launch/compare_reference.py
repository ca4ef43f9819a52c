r"""Side by side with the PyTorch reference (github.com/Lou1sM/online_hard_clustering).

  pip install -e '.[reference]'   # PyTorch (CPU is enough)
  python launch/compare_reference.py --reference_dir=PATH_TO_ITS_CHECKOUT \
      --dataset=cifar10 --data_dir=../shared/data/tfds --epochs=1 --subset=5000

(a) Feeds identical cost tables, float64 and then float32, to the reference's own assignment routine
    (`ClusterNet.assign_batch_probabilistic`) and to `ohc_jax.core.assign.combination_assign`, and reports
    the fraction of identical labels and both times per batch.
(b) Trains both on the same data (the first --subset points of train+test, the paper's protocol) with
    the same hyperparameters, and prints their metrics and training images/s side by side.
    --dataset: cifar10, cifar100, fashion_mnist or stl10 (its c10, c100, fashmnist, stl). Method
    `entropy` pairs its --kl (our entropy_reference's loss) with our entropy.

The reference's files are not modified. Its helper package `dl_utils` (not on PyPI) and `torchvision`
(only used there for data loading) are replaced by small stand-ins, and where there is no GPU its
hard-coded CUDA calls are redirected to the CPU. What each side does, aspect by aspect, with the
reference's file and line: docs/fidelity.md.
"""

import contextlib
import importlib
import io
import math
import os
import re
import sys
import tempfile
import time
import traceback
import types
import warnings

import numpy as np
from absl import app, flags, logging

from ohc_jax.errors import UsageError

_REFERENCE_DIR = flags.DEFINE_string('reference_dir', os.environ.get('OHC_REFERENCE_DIR'),
                                     'Checkout of the PyTorch reference.')
_DATASET = flags.DEFINE_string('dataset', 'cifar10', 'Data set for part (b).')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'tfds data dir.')
_EPOCHS = flags.DEFINE_integer('epochs', 1, 'Training epochs for part (b).')
_SUBSET = flags.DEFINE_integer('subset', 5000, 'Points of train+test used in part (b).')
_TABLES = flags.DEFINE_integer('tables', 20, 'Cost tables for part (a).')
_PARTS = flags.DEFINE_list('parts', ['assign', 'train'], 'Which parts to run.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed.')
_METHODS = flags.DEFINE_list('methods', ['combination', 'none'], 'Methods for part (b): any of '
                             'combination, none, variance, entropy, sinkhorn, neural_gas.')

# Reference's method flags (it has no working --ent / --ckm flags: its parser calls them --kl, and
# --ckm is parsed but unused: its CKM code, train.py:86-98 and 248-284 at 37a5908, was lost later).
REFERENCE_METHODS = {'combination': [], 'none': ['--no_reg'], 'variance': ['--var'],
                     'entropy': ['--kl'], 'sinkhorn': ['--sinkhorn'], 'neural_gas': ['--ng']}
# Our data set -> the reference's -d name (its cl_args.py:53 choices), which also sets its simp
# net's input channels and flatten size (train.py:38-46). The harness feeds images, so realdisp (its
# 1-D net, set up outside get_cl_args) is left out.
REFERENCE_DATASETS = {'cifar10': 'c10', 'cifar100': 'c100', 'fashion_mnist': 'fashmnist',
                      'stl10': 'stl'}


def reference_dataset(dataset: str) -> str:
  """The reference's -d name for one of our data sets; UsageError for one it lacks."""
  if dataset not in REFERENCE_DATASETS:
    names = ', '.join(f'{ours} (its {theirs})' for ours, theirs in REFERENCE_DATASETS.items())
    raise UsageError(f'--dataset={dataset}: the harness runs the reference on {names} only: set '
                     f'--dataset= to one of those')
  return REFERENCE_DATASETS[dataset]


def assignment_agreement(reference_fn, our_fn, tables) -> dict:
  """Fraction of identical labels over cost tables, and each function's median time per table.

  Each function runs over all the tables in turn, so that neither's threads (PyTorch's stay busy a
  while after each call) slow the other's timing."""
  def run(fn):
    labels, times = [], []
    for costs in tables:
      start = time.perf_counter()
      labels.append(np.asarray(fn(costs)))
      times.append(time.perf_counter() - start)
    return labels, 1e3 * float(np.median(times))
  (ref, ref_ms), (ours, ours_ms) = run(reference_fn), run(our_fn)
  same = sum(int(np.sum(r == o)) for r, o in zip(ref, ours))
  total = sum(len(r) for r in ref)
  return {'tables': len(tables), 'labels': total, 'agreement': same / total,
          'reference_ms': ref_ms, 'ours_ms': ours_ms}


def cost_tables(count: int, batch: int, num_clusters: int, seed: int) -> list[np.ndarray]:
  """float64 tables shaped like the reference's: squared distances / sigma, minus a constant."""
  rng = np.random.default_rng(seed)
  tables = []
  for _ in range(count):
    z = rng.normal(size=(batch, 128)) + 2 * rng.normal(size=(num_clusters, 128))[
        rng.integers(0, num_clusters, batch)]
    mu = rng.normal(size=(num_clusters, 128))
    tables.append(((z[:, None] - mu[None]) ** 2).sum(-1) / 100 - math.log(100) * 64)
  return tables


def format_table(rows: list[dict], columns: list[str]) -> str:
  """A Markdown table of `rows` (one per implementation), the given columns in order."""
  def cell(value):
    return f'{value:.4f}' if isinstance(value, float) else str(value)
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(cell(row.get(c, 'n/a')) for c in columns) + ' |' for row in rows]
  return '\n'.join(lines)


# The reference on this machine: stand-ins for its helper modules, CUDA redirected to the CPU.


def _stand_ins():
  """Minimal replacements for what the reference imports from dl_utils and torchvision."""
  import torch
  from scipy.optimize import linear_sum_assignment

  def label_counts(labels):
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))

  def get_trans_dict(gt, pred):
    """cluster -> class by Hungarian matching; its keys but the last name the matched clusters."""
    num = int(max(np.max(gt), np.max(pred))) + 1
    table = np.zeros((num, num))
    np.add.at(table, (np.asarray(pred), np.asarray(gt)), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    mapping = dict(zip(rows.tolist(), cols.tolist()))
    mapping[-1] = -1
    return mapping

  def accuracy(pred, gt):
    mapping = get_trans_dict(gt, pred)
    return float(np.mean(np.array([mapping.get(p, -1) for p in pred]) == gt))

  class CifarLikeDataset(torch.utils.data.Dataset):
    def __init__(self, data, targets, transform=None):
      self.data, self.targets, self.transform = data, targets, transform

    def __len__(self):
      return len(self.data)

    def __getitem__(self, i):
      x = self.data[i]
      return (self.transform(x) if self.transform else x), int(self.targets[i])

  def to_tensor(x):
    x = torch.as_tensor(np.asarray(x))
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    return x.permute(2, 0, 1) if x.ndim == 3 else x[None]

  class Normalize:
    def __init__(self, mean, std):
      self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

    def __call__(self, x):
      return (x - self.mean) / self.std

  class Compose:
    def __init__(self, fns):
      self.fns = fns

    def __call__(self, x):
      for fn in self.fns:
        x = fn(x)
      return x

  modules = {
      'dl_utils.label_funcs': dict(label_counts=label_counts, get_trans_dict=get_trans_dict,
                                   accuracy=accuracy, compress_labels=None),
      'dl_utils.tensor_funcs': dict(cudify=lambda x: torch.as_tensor(x).cuda(),
                                    numpyify=lambda x: x.detach().cpu().numpy()
                                    if torch.is_tensor(x) else np.asarray(x),
                                    recursive_np_or=None),
      'dl_utils.misc': dict(set_experiment_dir=None, asMinutes=lambda s: f'{s / 60:.1f}m',
                            scatter_clusters=None, check_dir=None),
      'dl_utils.torch_misc': dict(CifarLikeDataset=CifarLikeDataset, check_dir=None),
      'torchvision.transforms': dict(Compose=Compose, Normalize=Normalize,
                                     ToTensor=lambda: to_tensor),
  }
  for name in ('dl_utils', 'torchvision', *modules):
    module = sys.modules.setdefault(name, types.ModuleType(name))
    for key, value in modules.get(name, {}).items():
      setattr(module, key, value)
  sys.modules['dl_utils'].__path__ = []
  sys.modules['torchvision'].transforms = sys.modules['torchvision.transforms']


def _redirect_cuda_to_cpu():
  import torch
  if torch.cuda.is_available():
    return
  torch.Tensor.cuda = lambda self, *a, **k: self
  torch.nn.Module.cuda = lambda self, *a, **k: self

  def on_cpu(fn):
    def wrapped(*args, **kwargs):
      if str(kwargs.get('device', '')).startswith('cuda'):
        kwargs['device'] = 'cpu'
      return fn(*args, **kwargs)
    return wrapped

  for name in ('randn', 'zeros', 'ones', 'eye', 'tensor', 'arange', 'zeros_like', 'ones_like'):
    setattr(torch, name, on_cpu(getattr(torch, name)))
  torch.nn.Linear.__init__ = on_cpu(torch.nn.Linear.__init__)


def load_reference(reference_dir: str):
  """The reference's train module, importable on this machine."""
  if not os.path.exists(os.path.join(reference_dir, 'train.py')):
    raise UsageError(f'no train.py in --reference_dir={reference_dir}: point it at a checkout of '
                     f'github.com/Lou1sM/online_hard_clustering')
  try:
    import torch
  except ImportError:
    raise UsageError("PyTorch is not installed: pip install -e '.[reference]'") from None
  torch.set_num_threads(os.cpu_count() or 1)
  _stand_ins()
  _redirect_cuda_to_cpu()
  sys.path.insert(0, os.path.abspath(reference_dir))
  return importlib.import_module('train')


def reference_assign_fn(reference):
  """The reference's own combination assignment, as a function of a (B, K) float64 table."""
  import torch
  reference.ARGS = types.SimpleNamespace(imbalance=0, constrained_eval=False)

  def assign(costs):
    net = types.SimpleNamespace(cluster_log_probs=torch.tensor(costs), training=True,
                                cluster_counts=torch.zeros(costs.shape[1]).long(),
                                bs=costs.shape[0], epoch_num=0)
    reference.ClusterNet.assign_batch_probabilistic(net)
    return net.batch_assignments.numpy()
  return assign


def our_assign_fn(dtype: str):
  import jax
  import jax.numpy as jnp
  from ohc_jax.core import assign
  jax.config.update('jax_enable_x64', True)
  fn = jax.jit(assign.combination_assign)
  return lambda costs: jax.block_until_ready(fn(jnp.asarray(costs, dtype))[0])


def part_assign(reference) -> dict:
  """Both routines on the same tables, in float64 (the reference's costs) and in float32 (ours)."""
  results = {}
  for dtype in ('float64', 'float32'):
    tables = [t.astype(dtype) for t in cost_tables(_TABLES.value, 256, 10, _SEED.value)]
    ours = our_assign_fn(dtype)
    ours(tables[0])  # Compile outside the timing.
    result = assignment_agreement(reference_assign_fn(reference), ours, tables)
    print(f'(a) assignment on {result["tables"]} identical {dtype} tables of 256 x 10: '
          f'{100 * result["agreement"]:.2f}% identical labels')
    print(format_table([{'implementation': 'reference (PyTorch loop)',
                         'ms_per_batch': result['reference_ms']},
                        {'implementation': 'ohc_jax (parallel, jitted)',
                         'ms_per_batch': result['ours_ms']}], ['implementation', 'ms_per_batch']))
    results[dtype] = result
  return results


def _data(dataset: str, data_dir, subset: int):
  from ohc_jax import configuration
  from ohc_jax import data as data_lib
  config = configuration.from_file(os.path.join(configuration.CONFIG_DIR, f'{dataset}.py'))
  config.update(data_dir=data_dir, max_examples=subset)
  return config, data_lib.load(config)


def train_reference(reference, data, dataset: str, method: str, epochs: int) -> dict:
  """Trains the reference on `data` (its own defaults otherwise); its best-NMI figures."""
  import torch
  sys.argv = ['train.py', '-d', reference_dataset(dataset), '-e', str(epochs), '--suppress_prints',
              *REFERENCE_METHODS[method]]
  args = reference.cl_args.get_cl_args()
  args.nc = data.num_classes
  args.prior = np.ones(args.nc) / args.nc
  args.exp_dir = tempfile.mkdtemp()
  reference.ARGS = args
  loader = reference.DataLoader
  reference.DataLoader = lambda *a, **k: loader(*a, **dict(k, num_workers=0))
  images = data.train.images
  dset = sys.modules['dl_utils.torch_misc'].CifarLikeDataset(
      images, data.train.labels,  # The inputs ours sees ([0, 1] grey, [-1, 1] colour).
      lambda x: torch.as_tensor(x).permute(2, 0, 1).float() * data.scale + data.offset)
  net = reference.ClusterNet(args)
  epoch_time = [0.0]
  train_one_epoch = net.train_one_epoch

  def timed(loader):
    start = time.perf_counter()
    train_one_epoch(loader)
    epoch_time[0] += time.perf_counter() - start
  net.train_one_epoch = timed
  out = io.StringIO()
  try:
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
      warnings.simplefilter('ignore')  # Its probes' lbfgs ConvergenceWarnings, 10 lines each.
      net.train_epochs(epochs, dset, val_too=True)
  except Exception as e:  # Several of the reference's baselines crash.
    return {'status': crash_status(e)}
  found = dict(re.findall(r'Best ([\w* ]+?):\s*([-\d.]+)', out.getvalue()))
  return {'status': 'ok', 'acc': float(found['Acc']), 'nmi': float(found['NMI']),
          'ari': float(found['ARI']), 'kl_star': float(found['KL*']),
          'images_per_s': epochs * len(images) / epoch_time[0]}


def crash_status(error: BaseException) -> str:
  """'crashed: Type: first line of the message (file:line)', where it was raised."""
  message = (str(error).splitlines() or [''])[0][:80]
  where = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
  place = f' ({os.path.basename(where[0].filename)}:{where[0].lineno})' if where else ''
  return f'crashed: {type(error).__name__}' + (f': {message}' if message else '') + place


def train_ours(config, method: str, epochs: int) -> dict:
  from ohc_jax.run import train
  config.update(method=method, num_epochs=epochs, progress_bar=False, seed=_SEED.value)
  with tempfile.TemporaryDirectory() as workdir:
    results = train.train_and_evaluate(config, workdir)
  best = results['best_nmi']
  # The last epoch's speed: the first one's includes compiling the step.
  return {'status': 'ok', **{k: best[k] for k in ('acc', 'nmi', 'ari', 'kl_star')},
          'images_per_s': results['final']['train_images_per_s']}


def part_train(reference) -> list[dict]:
  config, data = _data(_DATASET.value, _DATA_DIR.value, _SUBSET.value)
  rows = []
  for method in _METHODS.value:
    rows.append({'implementation': 'reference', 'method': method,
                 **train_reference(reference, data, _DATASET.value, method, _EPOCHS.value)})
    rows.append({'implementation': 'ohc_jax', 'method': method,
                 **train_ours(config.copy_and_resolve_references(), method, _EPOCHS.value)})
  print(f'(b) {_EPOCHS.value} epoch(s) on the first {len(data.train)} points of {_DATASET.value} '
        f'train+test (metrics: best-NMI epoch; images/s: reference over all epochs, ohc_jax its '
        f'last epoch, as its first includes compilation; use --epochs >= 2):')
  print(format_table(rows, ['implementation', 'method', 'status', 'acc', 'nmi', 'ari', 'kl_star',
                            'images_per_s']))
  return rows


def check_train_options(dataset: str, methods: list[str]) -> None:
  """UsageError for a data set or method part (b) cannot run on the reference."""
  reference_dataset(dataset)
  unknown = sorted(set(methods) - set(REFERENCE_METHODS))
  if unknown:
    raise UsageError(f'--methods: unknown {unknown}: choose from {", ".join(REFERENCE_METHODS)}')


def run() -> None:
  if not _REFERENCE_DIR.value:
    raise UsageError('pass --reference_dir (or set OHC_REFERENCE_DIR) to a checkout of the '
                     'reference')
  if 'train' in _PARTS.value:
    check_train_options(_DATASET.value, _METHODS.value)
  reference = load_reference(_REFERENCE_DIR.value)
  if 'assign' in _PARTS.value:
    part_assign(reference)
  if 'train' in _PARTS.value:
    part_train(reference)


def main(argv):
  del argv
  from ohc_jax.models import conv
  conv.configure_xla_cpu()  # Before JAX starts its backend.
  logging.set_verbosity(logging.WARNING)
  try:
    run()
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
