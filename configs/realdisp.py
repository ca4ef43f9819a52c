r"""Online hard clustering on RealDisp: 117-channel body-sensor windows of 512 steps, 33 activities.

  python -m ohc_jax.main --workdir=runs/realdisp --config=configs/realdisp.py \
      --config.manual_dir=PATH_TO_UNZIPPED_RELEASE --config.data_dir=PATH_TO_TFDS_DATA

The first run prepares the tfds data set from the UCI release's subjectN_ideal.log files in
manual_dir (https://archive.ics.uci.edu/dataset/305); later runs read it from data_dir. As the
reference (docs/fidelity.md): the conv1d encoder, nz = 32, 33 clusters, all windows for training
and evaluation.
"""

from ohc_jax.configuration import base_config


def get_config():
  c = base_config()
  c.dataset = 'realdisp'
  c.encoder = 'conv1d'
  c.latent_dim = 32
  c.num_clusters = 33
  c.eval_batch_size = 256
  return c
