#!/usr/bin/env bash
# Multi-node data-parallel training under SLURM: N nodes x G GPUs, one process per node.
#
#   sbatch --nodes=2 --gres=gpu:4 launch/slurm.sh --workdir=runs/c10 --config=configs/cifar10.py \
#       --config.data_dir=/path/to/tfds --config.batch_size=1024
#
# jax.distributed.initialize() reads the coordinator, process count and id from SLURM's environment
# (ohc_jax calls it when SLURM_NTASKS > 1 or --config.distributed=True). Every process reads the same
# data and feeds its own rows of each global batch; process 0 alone writes the workdir's files.
#SBATCH --job-name=ohc_jax
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
source .venv/bin/activate
srun python -m ohc_jax.main --config.distributed=True "$@"
