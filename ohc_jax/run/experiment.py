"""One experiment: what a config builds (model with its input scaling, optimizer, initial state
created sharded, train and evaluation steps, the epoch-end updates), built in one place for
training, inference, the benchmarks and the tests."""

import dataclasses
from typing import Any, Callable, Optional

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from ohc_jax import models, sharding
from ohc_jax.core import costs, imbalance
from ohc_jax import data as data_lib
from ohc_jax.run import steps
from ohc_jax.core.methods import make_method
from ohc_jax.run.train_state import TrainState, create_train_state, make_optimizer


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """What the experiment needs to know of its inputs: one example's shape and stored dtype, the
  map of stored values to the encoder's range (x * scale + offset), and the number of training
  points (ckm's pretraining phase is counted in steps of an epoch; 0 for inference)."""
  shape: tuple
  dtype: str
  scale: float
  offset: float
  num_train: int = 0

  @classmethod
  def of(cls, data) -> 'InputSpec':
    """The spec of a data_lib.Data."""
    # A streaming source has the shape and dtype it reads (a mapped file's may be another).
    images = data.train.images if isinstance(data.train, data_lib.Split) else data.train
    return cls(tuple(int(d) for d in images.shape[1:]), str(images.dtype), float(data.scale),
               float(data.offset), len(data.train))


@dataclasses.dataclass(frozen=True)
class Experiment:
  config: Any
  spec: InputSpec
  mesh: Mesh
  model: Any
  tx: Any
  steps_per_epoch: int
  train_step: Optional[Callable]  # (state, global batch) -> (state, metrics); None for inference.
  eval_step: Callable  # (state, global batch) -> {'cluster', 'cost', 'soft', 'z'[, 'constrained']}

  def init_state(self, seed: Optional[int] = None) -> TrainState:
    """The initial state of config.seed (or seed), replicated over the mesh."""
    seed = self.config.seed if seed is None else seed
    state = create_train_state(self.config, self.model, self.tx, self.spec.shape,
                               jax.random.key(seed))
    return jax.device_put(state, sharding.replicated(self.mesh))

  def to_global(self, local_batch):
    return sharding.to_global(local_batch, self.mesh)

  def new_epoch(self, state: TrainState) -> TrainState:
    """Cluster counts start each epoch at zero (they carry through it with keep_counts)."""
    zeros = np.zeros(self.config.num_clusters, np.int32)
    return state.replace(counts=jax.device_put(zeros, sharding.replicated(self.mesh)))

  def warm_start(self, state: TrainState, images: np.ndarray) -> TrainState:
    """Centroids := encodings of the first K of `images` (the epoch's first batch, at least K),
    BatchNorm using their statistics as in training (the reference encodes them in eval mode, with
    BatchNorm's initial running statistics, which puts all the centroids in a small region away
    from the training encodings, and its optimiser then never updates them: docs/fidelity.md)."""
    x = models.preprocess(images, self.spec.scale, self.spec.offset)
    z, _ = self.model.apply({'params': state.params['encoder'], 'batch_stats': state.batch_stats},
                            x, train=True, mutable=['batch_stats'])
    centroids = jax.device_put(z[:self.config.num_clusters], sharding.replicated(self.mesh))
    return state.replace(params={**state.params, 'centroids': centroids})

  def end_of_epoch(self, state: TrainState, evaluation, prior: Optional[np.ndarray]) -> TrainState:
    """The updates an epoch's evaluation (train.Evaluation) makes: the prior re-matched to the
    clusters (imbalanced data; in the costs from the next epoch on) and, with covariance
    'estimated', the precisions re-estimated from the encodings and clusters kept."""
    config, rep, outputs = self.config, sharding.replicated(self.mesh), evaluation.outputs
    if prior is not None:
      log_prior = imbalance.matched_log_prior(prior, evaluation.accumulator.table,
                                              config.prior_matching)
      state = state.replace(log_prior=jax.device_put(log_prior, rep))
    if config.covariance == 'estimated':
      precision, why = costs.estimate_precisions(outputs['z'], outputs['cluster'],
                                                 config.num_clusters, config.sigma)
      if precision is None:
        logging.warning('step %d: covariances not re-estimated: %s', int(state.step), why)
      else:
        state = state.replace(params={**state.params, 'precision': jax.device_put(precision, rep)})
    return state


def build(config, spec: InputSpec, mesh: Optional[Mesh] = None, *,
          train: bool = True) -> Experiment:
  """The experiment of a config for inputs like `spec`, on `mesh` (default: config.num_devices
  devices, checked against the batch sizes); `train=False` builds no train step (inference)."""
  if mesh is None:
    mesh = sharding.make_mesh(config)
  model, tx = models.make_encoder(config), make_optimizer(config)
  steps_per_epoch = spec.num_train // config.batch_size
  train_step = (steps.make_train_step(config, model, tx, make_method(config), mesh, spec.scale,
                                      spec.offset, steps_per_epoch=steps_per_epoch)
                if train else None)
  eval_step = steps.make_eval_step(config, model, mesh, spec.scale, spec.offset)
  return Experiment(config, spec, mesh, model, tx, steps_per_epoch, train_step, eval_step)
