"""The base configuration every config file starts from, and its validation."""

import difflib
import importlib.resources
import importlib.util
import math
import os

import ml_collections
import numpy as np
from ml_collections import config_dict

from ohc_jax import memory, models
from ohc_jax.core import assign, imbalance
from ohc_jax import data as data_lib
from ohc_jax.core.costs import COVARIANCES
from ohc_jax.errors import UsageError
from ohc_jax.core.methods import IMAGE_METHODS, METHODS, SOFT_TRAIN_METHODS

PROTOCOLS = ('paper', 'holdout')
ASSIGNMENT_SCOPES = ('global', 'device')


def base_config() -> ml_collections.ConfigDict:
  """Where the reference has the option, its default (simp encoder, batch 256, evaluation batch
  1024, Adam 1e-3, nz 128, sigma 100, 10 clusters, every switch off), except num_epochs (10; its
  --epochs defaults to 1) and hidden_dim (256, and our mlp has BatchNorm; its fc net is 512 wide
  without). Each default against its argparse line: docs/fidelity.md."""
  c = ml_collections.ConfigDict()
  # Data.
  c.dataset = 'cifar10'
  c.data_dir = config_dict.placeholder(str)  # None: $TFDS_DATA_DIR, else tfds's default.
  c.download = False
  c.manual_dir = config_dict.placeholder(str)  # realdisp: folder with the UCI subjectN_ideal.log.
  c.protocol = 'paper'  # 'paper': train and evaluate on train+test; 'holdout': train/test.
  # tfds data sets: their features, splits and image size.
  c.image_key = 'image'
  c.label_key = 'label'  # A ClassLabel feature.
  c.train_split = 'train'  # Any tfds split spec, e.g. 'train[:90%]'.
  c.eval_split = 'test'  # The same as train_split: one split, trained and evaluated on.
  c.image_size = 0  # 0: as stored; N: shorter side resized to N, centre cropped to N x N.
  c.input_mode = 'auto'  # 'memory': decoded once, held; 'stream': tfds ArrayRecord or
  # vectors:FILE.npy read by index, never held; 'auto': stream when the data would exceed
  # max_host_memory_gb.
  c.max_host_memory_gb = 16.0
  # Stream mode: a record that does not decode is skipped and counted (training: the next record
  # that decodes takes its place; evaluation: left out) instead of stopping the run.
  c.skip_bad_records = False
  c.input_threads = 0  # Stream mode: host threads reading batches (0: half the host's cores).
  c.input_priority = 'idle'  # Stream mode: 'idle' (read on idle CPU time first) or 'normal'.
  c.max_examples = 0  # Keep only the first N points of each split (0: all), for quick runs.
  c.imbalance = 0  # 0-3: the reference's class keep-probabilities (imbalance.py, docs/fidelity.md).
  c.prior_matching = 'identity'  # Cluster k's prior entry: 'identity' (k's; the reference's code),
  # 'size' (by sorted cluster size) or 'hungarian' (its matched class's: peeks at the labels).
  c.prior_scope = 'combination'  # Which methods' costs get the prior: 'combination' (the reference)
  # or 'all' (every method's costs, and Sinkhorn's marginals).
  # Model.
  c.encoder = 'simp'
  c.hidden_dim = 256  # 'mlp' encoder only.
  c.latent_dim = 128
  c.compute_dtype = 'float32'  # 'bfloat16': activations and convolutions of the encoder (and the
  # ckm decoder) in bfloat16; parameters, optimizer state, BatchNorm statistics, the cost table,
  # assignment, losses and metrics stay float32.
  c.conv_impl = 'auto'  # simp's convolutions: 'space_to_depth' (fast on XLA:CPU), 'plain' (nn.Conv,
  # max-pool) or 'auto' (space-to-depth on the CPU backend, plain elsewhere); the same parameters.
  # Clustering.
  c.num_clusters = 10
  c.sigma = 100.0
  c.method = 'combination'
  c.ckm_pretrain_frac = 0.5  # ckm: the fraction of the epochs that train the reconstruction only.
  c.assign_impl = 'parallel'
  c.keep_counts = False  # Carry cluster counts through the epoch (--keep_scores; docs/fidelity.md).
  c.log_normaliser = True  # Add the reference's Gaussian constant -(nz/2) log(sigma) to the costs
  # of the methods whose gradients depend on it (variance, neural_gas, entropy_reference; see
  # docs/fidelity.md).
  c.soft_train = False  # Loss: mean_i sum_k softmax(-C_i)_k C[i,k] (its --soft_train, there for
  # Sinkhorn alone and K times smaller: docs/fidelity.md).
  c.warm_start = False  # Centroids = encodings of the first K training points, then trained (its
  # --warm_start never updates them: docs/fidelity.md).
  c.constrained_eval = False  # Combination assignment at evaluation too, batch by batch.
  c.covariance = 'fixed'  # 'fixed' (sigma I), 'learned_diagonal', 'estimated' (after each epoch).
  c.probe_every = 0  # Linear and 10-NN probes on the encodings every N epochs (0: never).
  c.eval_every_steps = 0  # Also evaluate every N steps within epochs (0: at epochs' ends only).
  c.eval_sample = 0  # Evaluation outputs kept for probes, plots and covariances: a seeded sample
  # of N points (0: all). The metrics are accumulated batch by batch over every point.
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
  c.profile_steps = 0  # A jax.profiler trace of this many steps (from the run's second) in
  # WORKDIR/profile on process 0; 0: none.
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
  _check(data_lib.loader(str(dataset)) is not None,
         f'unknown dataset {dataset!r}: use --config.dataset= one of '
         f'{", ".join(data_lib.DATASETS)}, tfds:NAME (any tfds image data set), '
         f'vectors:FILE.npz (arrays x, y) or folder:DIR (one sub-folder of images per class)')
  for field in ('image_key', 'label_key', 'train_split', 'eval_split'):
    _check(isinstance(config[field], str) and config[field].strip() != '',
           f'{field} is empty: set --config.{field}= to a tfds feature or split name')
  _check(int(config.image_size) >= 0,
         f'image_size must be >= 0, got {config.image_size}: set --config.image_size=')
  tfds_set = data_lib.is_tfds(str(dataset))
  _check(tfds_set or not config.image_size,
         f'image_size resizes tfds images, and {dataset!r} is not a tfds data set: set '
         f'--config.image_size=0')
  _choice(config, 'encoder', models.ENCODERS)
  _choice(config, 'compute_dtype', models.COMPUTE_DTYPES)
  _choice(config, 'conv_impl', models.CONV_IMPLS)
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
  by_path = str(dataset).startswith(tuple(data_lib.PATH_DATASETS))
  _check(config.protocol == 'paper' or not (sequences or by_path or (
      tfds_set and config.train_split == config.eval_split)),
         f'{dataset} has no test split: use --config.protocol=paper')
  _choice(config, 'imbalance', (0, 1, 2, 3))
  _choice(config, 'prior_matching', imbalance.MATCHINGS)
  _choice(config, 'prior_scope', imbalance.SCOPES)
  _choice(config, 'assign_impl', assign.IMPLS)
  _choice(config, 'input_mode', ('auto', 'memory', 'stream'))
  _choice(config, 'input_priority', ('idle', 'normal'))
  _choice(config, 'assignment_scope', ASSIGNMENT_SCOPES)
  for field, low in (('num_clusters', 2), ('batch_size', 1), ('eval_batch_size', 1),
                     ('hidden_dim', 1), ('latent_dim', 1), ('num_epochs', 1),
                     ('log_every_steps', 1), ('checkpoint_every_steps', 0), ('keep_checkpoints', 1),
                     ('plots_every_epochs', 0), ('profile_steps', 0), ('probe_every', 0),
                     ('eval_sample', 0), ('eval_every_steps', 0), ('input_threads', 0),
                     ('max_examples', 0), ('seed', 0), ('num_devices', 0), ('num_processes', 1), ('process_id', 0)):
    if config[field] is not None:  # num_processes, process_id: None means from the cluster.
      _check(int(config[field]) >= low,
             f'{field} must be >= {low}, got {config[field]}: set --config.{field}=')
  _check(config.seed < 2**32, f'seed must be < 2**32, got {config.seed}: set --config.seed=')
  _check(config.process_id is None or config.num_processes is None
         or config.process_id < config.num_processes,
         f'process_id {config.process_id} must be < num_processes {config.num_processes}: set '
         f'--config.process_id= from 0 to {config.num_processes} - 1')
  for field in ('sigma', 'learning_rate', 'max_host_memory_gb'):
    _check(math.isfinite(config[field]) and config[field] > 0,
           f'{field} must be > 0 and finite, got {config[field]}: set --config.{field}=')
  address = config.coordinator_address
  _check(address is None or address.rpartition(':')[2].isdigit(),
         f'coordinator_address {address!r} is not HOST:PORT: set --config.coordinator_address=')
  for field in ('data_dir', 'manual_dir'):
    _check(config[field] != '', f'{field} is empty: name a folder with --config.{field}=, or '
                                f'leave it unset')
  _check_sigma_in_float32(float(config.sigma))
  processes = config.num_processes or int(os.environ.get('SLURM_NTASKS', '1'))
  memory.refuse_if_too_big(config, memory.host_memory(), 'this host', processes=processes)


# Squared distances ||z - mu||^2 whose costs must be normal float32 numbers: encodings of any
# scale a run reaches lie well inside.
SQUARED_DISTANCES = (1e-8, 1e8)


def sigma_range() -> tuple[float, float]:
  """The sigmas for which the costs of SQUARED_DISTANCES neither overflow float32 nor underflow
  below its smallest normal number (where XLA flushes to zero: equal costs, one cluster)."""
  f32 = np.finfo(np.float32)
  return SQUARED_DISTANCES[1] / float(f32.max), SQUARED_DISTANCES[0] / float(f32.tiny)


def _check_sigma_in_float32(sigma: float) -> None:
  low, high = sigma_range()
  _check(low <= sigma <= high,
         f'sigma={sigma:g} makes the costs ||z - mu||^2 / sigma '
         f'{"underflow to 0" if sigma > high else "overflow to inf"} in float32 for squared '
         f'distances from {SQUARED_DISTANCES[0]:g} to {SQUARED_DISTANCES[1]:g}: set '
         f'--config.sigma= between {low:.2g} and {high:.2g}')


def _config_dir() -> str:
  """The repository's configs/ in a checkout (or editable install), else the installed copy."""
  checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if os.path.isfile(os.path.join(checkout, 'setup.cfg')):
    return os.path.join(checkout, 'configs')
  return str(importlib.resources.files('ohc_jax.configs'))


CONFIG_DIR = _config_dir()


def config_names() -> list[str]:
  """The NAMEs of CONFIG_DIR's config files, for --config=NAME."""
  return sorted(name[:-3] for name in os.listdir(CONFIG_DIR)
                if name.endswith('.py') and not name.startswith('_'))


def config_path(name: str) -> str:
  """A config file: a path that exists, else one of CONFIG_DIR ('cifar10', 'configs/cifar10.py')."""
  if os.path.isfile(name):
    return name
  short = name.removeprefix('configs/').removesuffix('.py')
  if short in config_names():
    return os.path.join(CONFIG_DIR, short + '.py')
  close = difflib.get_close_matches(short, config_names(), n=1)
  raise UsageError(f'no config file {name!r}: give the path of a .py file or one of '
                   f'{", ".join(config_names())}' + (f' (did you mean {close[0]}?)' if close
                                                     else ''))


def unknown_field(field: str) -> UsageError:
  """The error for a --config.FIELD that the config does not have."""
  close = difflib.get_close_matches(field, list(base_config().keys()), n=1)
  return UsageError(f'unknown config field {field!r}' + (f' (did you mean {close[0]}?)' if close
                                                          else '') +
                    ': the fields are those of base_config() in ohc_jax/configuration.py')


def from_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, e.g. from_file(config_path('cifar10'))."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
