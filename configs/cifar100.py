r"""Online hard clustering on CIFAR-100: 100 clusters on the fine labels.

  python -m ohc_jax.main --workdir=runs/cifar100 --config=configs/cifar100.py \
      --config.data_dir=PATH_TO_TFDS_DATA
"""

from ohc_jax.configuration import base_config


def get_config():
  c = base_config()
  c.dataset = 'cifar100'
  c.num_clusters = 100
  return c
