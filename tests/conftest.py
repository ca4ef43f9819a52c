"""Tests run on the CPU with 8 simulated devices (set before jax is imported)."""

import os
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Decoded tfds sets go to a cache of the test session's own, not the user's.
os.environ.setdefault('OHC_JAX_CACHE', tempfile.mkdtemp(prefix='ohc_jax_test_cache_'))

import pytest  # noqa: E402

from ohc_jax import configuration  # noqa: E402


@pytest.fixture
def digits_config():
  """The default digits job, shortened for tests."""
  c = configuration.from_file(os.path.join(configuration.CONFIG_DIR, 'default.py'))
  c.num_epochs = 3
  c.progress_bar = False
  c.plots_every_epochs = 0  # Plots cost ~1 s a run; tests/test_report.py tests them.
  return c


@pytest.fixture
def build():
  """build(config, num_devices=1, num_train=None) -> (data, experiment, its initial state of seed
  0): what training builds (num_train: the training points ckm's epochs count, default all)."""
  def make(config, num_devices=1, num_train=None):
    import dataclasses

    from ohc_jax import data as data_lib
    from ohc_jax.run import experiment
    config.num_devices = num_devices
    data = data_lib.load(config)
    spec = experiment.InputSpec.of(data)
    if num_train is not None:
      spec = dataclasses.replace(spec, num_train=num_train)
    exp = experiment.build(config, spec)
    return data, exp, exp.init_state(seed=0)
  return make
