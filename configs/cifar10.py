r"""Online hard clustering on CIFAR-10 with the reference's defaults (simp encoder, batch 256, nz 128),
except 10 epochs where its default is 1 (docs/fidelity.md).

  python -m ohc_jax.main --workdir=runs/cifar10 --config=configs/cifar10.py \
      --config.data_dir=../shared/data/tfds
"""

from ohc_jax.configuration import base_config


def get_config():
  c = base_config()
  c.dataset = 'cifar10'
  return c
