"""The base configuration every config file starts from, and its validation."""

import importlib.util
import os

import ml_collections
from ml_collections import config_dict

from ohc_jax.clusters import COVARIANCES
from ohc_jax.errors import UsageError
from ohc_jax.methods import IMAGE_METHODS, METHODS, SOFT_TRAIN_METHODS

DATASETS = ('digits', 'mnist', 'fashion_mnist', 'cifar10', 'cifar100', 'stl10', 'realdisp')
PATH_DATASETS = ('vectors:', 'folder:')  # 'vectors:FILE.npz', 'folder:DIR' (one folder a class).
ENCODERS = ('simp', 'mlp', 'conv1d', 'resnet18')
PROTOCOLS = ('paper', 'holdout')
ASSIGN_IMPLS = ('parallel', 'sequential')
ASSIGNMENT_SCOPES = ('global', 'device')


def base_config() -> ml_collections.ConfigDict:
  """The PyTorch reference's defaults (batch 256, Adam 1e-3, nz 128, sigma 100, 10 epochs)."""
  c = ml_collections.ConfigDict()
  # Data.
  c.dataset = 'cifar10'
  c.data_dir = config_dict.placeholder(str)  # None: $TFDS_DATA_DIR, else tfds's default.
  c.download = False
  c.manual_dir = config_dict.placeholder(str)  # realdisp: folder with the UCI subjectN_ideal.log.
  c.protocol = 'paper'  # 'paper': train and evaluate on train+test; 'holdout': train/test.
  c.max_examples = 0  # Keep only the first N points of each split (0: all), for quick runs.
  c.imbalance = 0  # 0-3: the reference's class keep-probabilities (see ohc_jax/imbalance.py).
  c.prior_matching = 'hungarian'  # How prior entries meet clusters: 'hungarian' (peeks) or 'size'.
  # Model.
  c.encoder = 'simp'
  c.hidden_dim = 256  # 'mlp' encoder only.
  c.latent_dim = 128
  # Clustering.
  c.num_clusters = 10
  c.sigma = 100.0
  c.method = 'combination'
  c.ckm_pretrain_frac = 0.5  # ckm: the fraction of the epochs that train the reconstruction only.
  c.assign_impl = 'parallel'
  c.keep_counts = False  # Carry cluster counts through the epoch (reference: --keep_scores).
  c.log_normaliser = True  # Add the reference's Gaussian constant -(nz/2) log(sigma) to the costs
  # of the methods whose loss depends on it (variance, variance_improved, neural_gas, entropy_reference).
  c.soft_train = False  # Loss: mean_i sum_k softmax(-C_i)_k C[i,k] (reference: --soft_train).
  c.warm_start = False  # Centroids = encodings of the first K training points (--warm_start).
  c.constrained_eval = False  # Combination assignment at evaluation too, batch by batch.
  c.covariance = 'fixed'  # 'fixed' (sigma I), 'learned_diagonal', 'estimated' (after each epoch).
  c.probe_every = 0  # Linear and 10-NN probes on the encodings every N epochs (0: never).
  # Optimisation.
  c.batch_size = 256  # Global batch, over all devices and processes.
  c.eval_batch_size = 1024
  c.learning_rate = 1e-3
  c.num_epochs = 10
  c.seed = 0
  # Devices.
  c.num_devices = 0  # 0: every device.
  c.assignment_scope = 'global'  # 'device': assign each device's shard on its own.
  c.distributed = False  # jax.distributed.initialize() for multi-process runs.
  c.coordinator_address = config_dict.placeholder(str)  # 'HOST:PORT'; None: from the cluster.
  c.num_processes = config_dict.placeholder(int)
  c.process_id = config_dict.placeholder(int)
  # Logging.
  c.log_every_steps = 50
  c.progress_bar = True
  # Run operations (checkpoints, plots).
  c.checkpoint_every_steps = 500  # Also at each epoch's end; 0: at epochs' ends only.
  c.keep_checkpoints = 3  # The latest checkpoints kept in WORKDIR/checkpoints.
  c.plots_every_epochs = 1  # PNGs in WORKDIR/plots every N epochs and at the last; 0: never.
  return c


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise UsageError(message)


def _choice(config, field: str, choices) -> None:
  value = config[field]
  _check(value in choices,
         f'unknown {field} {value!r}: use --config.{field}= one of {", ".join(map(str, choices))}')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UsageError naming the first bad field and the fix."""
  dataset = config.dataset
  _check(dataset in DATASETS or str(dataset).startswith(PATH_DATASETS),
         f'unknown dataset {dataset!r}: use --config.dataset= one of {", ".join(DATASETS)}, '
         f'vectors:FILE.npz (arrays x, y) or folder:DIR (one sub-folder of images per class)')
  _choice(config, 'encoder', ENCODERS)
  _choice(config, 'protocol', PROTOCOLS)
  _choice(config, 'method', METHODS)
  _choice(config, 'covariance', COVARIANCES)
  _check(not config.soft_train or config.method in SOFT_TRAIN_METHODS,
         f'soft_train replaces the mean cost of the labels, but method {config.method!r} has a loss '
         f'of its own: use soft_train with one of {", ".join(SOFT_TRAIN_METHODS)}')
  sequences = dataset == 'realdisp'
  _check(config.method not in IMAGE_METHODS or not (sequences or str(dataset).startswith('vectors:')),
         f'method {config.method} reconstructs images, which {dataset!r} does not have: use another '
         f'--config.method')
  _check(0 <= float(config.ckm_pretrain_frac) <= 1,
         f'ckm_pretrain_frac must be in [0, 1], got {config.ckm_pretrain_frac}: set '
         f'--config.ckm_pretrain_frac=')
  _check(config.encoder != 'conv1d' or sequences,
         f'encoder conv1d is for realdisp\'s sensor windows, not {dataset!r}: set --config.encoder=')
  _check(not sequences or config.encoder in ('conv1d', 'mlp'),
         f'realdisp\'s sensor windows need --config.encoder=conv1d (or mlp), not '
         f'{config.encoder!r}')
  _check(config.encoder == 'mlp' or not str(dataset).startswith('vectors:'),
         f'vectors need --config.encoder=mlp, not {config.encoder!r}')
  _check(config.protocol == 'paper' or not (sequences or str(dataset).startswith(PATH_DATASETS)),
         f'{dataset} has no test split: use --config.protocol=paper')
  _choice(config, 'imbalance', (0, 1, 2, 3))
  _choice(config, 'prior_matching', ('hungarian', 'size'))
  _choice(config, 'assign_impl', ASSIGN_IMPLS)
  _choice(config, 'assignment_scope', ASSIGNMENT_SCOPES)
  for field, low in (('num_clusters', 2), ('batch_size', 1), ('eval_batch_size', 1),
                     ('latent_dim', 1), ('num_epochs', 1), ('log_every_steps', 1),
                     ('checkpoint_every_steps', 0), ('keep_checkpoints', 1),
                     ('plots_every_epochs', 0), ('probe_every', 0)):
    _check(int(config[field]) >= low,
           f'{field} must be >= {low}, got {config[field]}: set --config.{field}=')
  for field in ('sigma', 'learning_rate'):
    _check(float(config[field]) > 0,
           f'{field} must be > 0, got {config[field]}: set --config.{field}= to a positive number')
  _check(int(config.num_devices) >= 0,
         f'num_devices must be >= 0 (0 means all), got {config.num_devices}')


CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def from_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, e.g. from_file(os.path.join(CONFIG_DIR, 'cifar10.py'))."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
