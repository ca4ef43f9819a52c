r"""Online hard clustering on STL-10: the labelled train and test splits, 96x96 colour images.

  python -m ohc_jax.main --workdir=runs/stl10 --config=configs/stl10.py \
      --config.data_dir=PATH_TO_TFDS_DATA
"""

from ohc_jax.configuration import base_config


def get_config():
  c = base_config()
  c.dataset = 'stl10'
  c.eval_batch_size = 256
  return c
