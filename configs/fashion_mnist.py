r"""Online hard clustering on Fashion-MNIST (28x28 grey images scaled to [0, 1]).

  python -m ohc_jax.main --workdir=runs/fashion_mnist --config=configs/fashion_mnist.py \
      --config.data_dir=PATH_TO_TFDS_DATA
"""

from ohc_jax.configuration import base_config


def get_config():
  c = base_config()
  c.dataset = 'fashion_mnist'
  return c
