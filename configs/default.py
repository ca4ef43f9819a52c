r"""The default job: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no download).

  python -m ohc_jax.main --workdir=runs/digits

An MLP encoder, 10 clusters, 30 epochs; about a minute on a 2-core CPU.
"""

from ohc_jax.configuration import base_config


def get_config():
  c = base_config()
  c.dataset = 'digits'
  c.encoder = 'mlp'
  c.hidden_dim = 256
  c.latent_dim = 32
  c.batch_size = 128
  c.num_epochs = 30
  c.log_every_steps = 5
  c.plots_every_epochs = 10  # Plotting (~1 s) costs about 5 epochs of this tiny job.
  return c
