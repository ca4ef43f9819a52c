#!/usr/bin/env bash
# Multi-host data-parallel training on GPUs under SLURM: one task (process) per GPU, as JAX wants
# here. jax.distributed.initialize() (--config.distributed=True) reads the coordinator, process
# count and id from SLURM's environment and gives each process the GPU of its SLURM_LOCALID, so
# every task must see all of its node's GPUs: ask for them with --gres, not --gpus-per-task.
#
#   sbatch --nodes=4 --ntasks-per-node=8 --gres=gpu:8 launch/slurm.sh --workdir=runs/imagenet64 \
#       --config=configs/imagenet64.py --config.data_dir=/path/to/tfds
#
# The global batch (4096 in imagenet64) must divide by the number of GPUs. Every process reads the
# same data and feeds its own rows of each global batch; process 0 alone writes the workdir's files.
# The data set is decoded first, by one task per node, into a node-local cache that the node's
# processes then memory-map (a cache on a network home directory would be read over the network).
#SBATCH --job-name=ohc_jax
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
source .venv/bin/activate
export OHC_JAX_CACHE="${OHC_JAX_CACHE:-/tmp/${USER}/ohc_jax}"
srun --ntasks-per-node=1 --ntasks="${SLURM_JOB_NUM_NODES}" python -c '
import sys
from absl import flags
from ohc_jax import configuration, main
from ohc_jax.data import input_pipeline
values = flags.FlagValues()
main.parse_flags(["main", *sys.argv[1:]], values)
configuration.validate(values.config)
input_pipeline.load(values.config)' "$@"
srun python -m ohc_jax.main --config.distributed=True "$@"
