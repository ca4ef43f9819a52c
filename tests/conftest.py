"""Tests run on the CPU with 8 simulated devices (set before jax is imported)."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

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
