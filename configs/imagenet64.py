r"""Online hard clustering of ImageNet (ILSVRC 2012) at 64x64 into 1,000 clusters: a ResNet-18
encoder, global batch 4096 over all hosts, trained and evaluated on train + validation (protocol
'paper'; the test split has no labels).

  sbatch --nodes=4 --ntasks-per-node=8 --gres=gpu:8 launch/slurm.sh --workdir=runs/imagenet64 \
      --config=configs/imagenet64.py --config.data_dir=/path/to/tfds

(a TPU pod: README, "Several devices and hosts"). Expected cost, estimated, not measured: tfds
must have prepared imagenet2012 beforehand (a manual download, ~150 GB). In memory mode (what
`auto` picks: 1.33M x 64 x 64 x 3 bytes is 15.2 GiB, under max_host_memory_gb) the first run on a
host decodes and resizes its 1.33M images once into the cache ($OHC_JAX_CACHE, memory-mapped by
every process of the host), of the order of an hour on 16 cores. With an ArrayRecord copy (tfds's
--file_format=array_record) and --config.input_mode=stream, each process instead reads, decodes
and resizes only its rows of each batch, on host threads. An epoch is 312 steps of 4096, and each
evaluation a pass over all 1.33M images with K=1000.
"""

from ohc_jax.configuration import base_config


def get_config():
  c = base_config()
  c.dataset = 'tfds:imagenet2012'
  c.eval_split = 'validation'
  c.image_size = 64
  c.encoder = 'resnet18'
  c.num_clusters = 1000
  c.batch_size = 4096
  c.eval_batch_size = 4096
  c.num_epochs = 30
  return c
