"""Data parallelism: 8 simulated devices behave as 1 with the same global batch."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from ohc_jax import models, sharding
from ohc_jax.core import assign
from ohc_jax.data import input_pipeline, pipeline
from ohc_jax.run import steps
from ohc_jax.configuration import CONFIG_DIR
from ohc_jax.errors import UsageError
from ohc_jax.core.methods import log_normaliser, make_method, refused_entries
from ohc_jax.run.train_state import create_train_state, make_optimizer


def _run_steps(config, num_devices, batches):
  config.num_devices = num_devices
  mesh = sharding.make_mesh(config)
  model, tx = models.make_encoder(config), make_optimizer(config)
  state = jax.device_put(create_train_state(config, model, tx, (8, 8, 1), jax.random.key(0)),
                         sharding.replicated(mesh))
  step = steps.make_train_step(config, model, tx, make_method(config), mesh, 1 / 16, 0.0)
  labels = []
  for batch in batches:
    state, m = step(state, sharding.to_global(batch, mesh))
    labels.append(np.asarray(m['labels']))
  return jax.device_get(state.params), labels


def _digits_batches(config, steps_count):
  data = input_pipeline.load(config)
  feed = pipeline.TrainFeed(data.train, config.batch_size, config.seed)
  batches = []
  for epoch in range(1, 10):
    for batch in feed.epoch(epoch):
      batches.append(batch)
      if len(batches) == steps_count:
        return batches


@pytest.mark.slow
def test_eight_devices_match_one_device(digits_config):
  assert jax.device_count() == 8
  batches = _digits_batches(digits_config, 20)
  params1, labels1 = _run_steps(digits_config, 1, batches)
  params8, labels8 = _run_steps(digits_config, 8, batches)
  for a, b in zip(labels1, labels8):
    np.testing.assert_array_equal(a, b)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), params1, params8)


@pytest.mark.slow
def test_device_scope_assigns_each_shard_on_its_own(digits_config):
  digits_config.assignment_scope = 'device'
  digits_config.num_devices = 8
  mesh = sharding.make_mesh(digits_config)
  model, tx = models.make_encoder(digits_config), make_optimizer(digits_config)
  state = create_train_state(digits_config, model, tx, (8, 8, 1), jax.random.key(0))
  batch = _digits_batches(digits_config, 1)[0]
  x = models.preprocess(batch['image'], 1 / 16, 0.0)
  z, _ = model.apply({'params': state.params['encoder'], 'batch_stats': state.batch_stats}, x,
                     train=True, mutable=['batch_stats'])
  from ohc_jax.core.costs import cluster_costs
  costs = np.asarray(cluster_costs(z, state.params['centroids'], digits_config.sigma,
                                   state.log_prior))
  expected = np.concatenate([np.asarray(assign.combination_assign(shard)[0])
                             for shard in np.split(costs, 8)])
  step = steps.make_train_step(digits_config, model, tx, make_method(digits_config), mesh,
                               1 / 16, 0.0)
  _, m = step(jax.device_put(state, sharding.replicated(mesh)), sharding.to_global(batch, mesh))
  np.testing.assert_array_equal(np.asarray(m['labels']), expected)
  global_labels = np.asarray(assign.combination_assign(costs)[0])
  assert not np.array_equal(global_labels, expected)  # The scopes really differ.


def test_batch_must_divide_by_device_count(digits_config):
  digits_config.batch_size = 100
  digits_config.num_devices = 8
  with pytest.raises(UsageError, match='multiple of 8'):
    sharding.make_mesh(digits_config)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  """Two processes on loopback, 2 CPU devices each, against one process with 4 devices."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  common = ['-m', 'ohc_jax.main', '--config.num_epochs=2', '--config.progress_bar=False']
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, *common, f'--workdir={tmp_path / "multi"}', '--config.distributed=True',
       f'--config.coordinator_address=127.0.0.1:{port}', '--config.num_processes=2',
       f'--config.process_id={i}'], cwd=os.path.dirname(CONFIG_DIR), env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
  single = subprocess.run([sys.executable, *common, f'--workdir={tmp_path / "single"}'],
                          cwd=os.path.dirname(CONFIG_DIR), env=env, capture_output=True,
                          text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  multi = json.loads((tmp_path / 'multi' / 'results.json').read_text())['final']
  one = json.loads((tmp_path / 'single' / 'results.json').read_text())['final']
  assert multi['train_loss'] == pytest.approx(one['train_loss'], rel=1e-5)
  assert multi['hard_sizes'] == one['hard_sizes']
  assert multi['acc'] == one['acc'] and multi['nmi'] == pytest.approx(one['nmi'])


def test_device_scope_sums_the_methods_counts_over_the_shards(digits_config):
  """entropy_reference on each shard on its own: refused_entries is the sum of the shards' counts
  (each with its own batch-mean row)."""
  digits_config.update(assignment_scope='device', num_devices=8, method='entropy_reference',
                       sigma=3.0)
  mesh = sharding.make_mesh(digits_config)
  model, tx = models.make_encoder(digits_config), make_optimizer(digits_config)
  state = create_train_state(digits_config, model, tx, (8, 8, 1), jax.random.key(0))
  batch = _digits_batches(digits_config, 1)[0]
  z, _ = model.apply({'params': state.params['encoder'], 'batch_stats': state.batch_stats},
                     models.preprocess(batch['image'], 1 / 16, 0.0), train=True,
                     mutable=['batch_stats'])
  from ohc_jax.core.costs import cluster_costs
  costs = np.asarray(cluster_costs(z, state.params['centroids'], 3.0, state.log_prior)
                     + log_normaliser(digits_config))
  expected = sum(int(refused_entries(shard)) for shard in np.split(costs, 8))
  step = steps.make_train_step(digits_config, model, tx, make_method(digits_config), mesh,
                               1 / 16, 0.0)
  _, m = step(jax.device_put(state, sharding.replicated(mesh)), sharding.to_global(batch, mesh))
  assert int(m['method']['refused_entries']) == expected > 0
