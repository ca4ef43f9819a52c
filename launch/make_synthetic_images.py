r"""Writes a synthetic image set of any size as a tfds data set in ArrayRecord (32x32x3 PNGs in 10
classes, one 'train' split), for measuring streaming beyond memory. Never commit its output.

  python launch/make_synthetic_images.py --out=/tmp/tfds_ar/synthetic/1.0.0 --num=1200000
  python launch/make_synthetic_images.py --out=/tmp/tfds_ar/synthetic_raw/1.0.0 --num=1200000 \
      --encoding=raw  # What the input suite compares (3.6 GB; stored as stream mode's copies)

Each class is a random coarse (4x4) colour pattern; each image that pattern plus noise. Shards of
--shard_size images are made and written one at a time (memory bounded by a shard), each from
its own seed (seed, shard), so the set depends on --seed and --shard_size alone, not on --workers.
"""

import argparse
import multiprocessing
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ohc_jax.data import array_record  # noqa: E402

NAME, CLASSES = 'synthetic_images', 10


def shard(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
  """A shard's images (size, 32, 32, 3) uint8 and labels, vectorised."""
  patterns = np.random.default_rng(seed).integers(0, 256, (CLASSES, 4, 4, 3), dtype=np.int16)
  rng = np.random.default_rng([seed, index])
  labels = rng.integers(0, CLASSES, size)
  # Noise at 16x16, upsampled: PNGs of ~1.9 kB, near CIFAR-10's ~2.4 kB, and fast to encode.
  half = patterns[labels].repeat(4, axis=1).repeat(4, axis=2)
  half = np.clip(half + rng.integers(-24, 25, half.shape, dtype=np.int16), 0, 255)
  return half.astype(np.uint8).repeat(2, axis=1).repeat(2, axis=2), labels


def _write(args) -> None:
  out, seed, index, size, count, encoding = args
  images, labels = shard(seed, index, size)
  array_record.write_records(array_record.shard_path(out, NAME, 'train', index, count),
                             array_record.encode_examples(images, labels, encoding))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--num', type=int, default=1_200_000)
  parser.add_argument('--shard_size', type=int, default=50_000)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--workers', type=int, default=1)
  parser.add_argument('--encoding', choices=('png', 'raw'), default='png',
                      help='how images are stored: PNG, as tfds prepares them, or raw bytes')
  args = parser.parse_args(argv)
  sizes = [min(args.shard_size, args.num - s) for s in range(0, args.num, args.shard_size)]
  jobs = [(args.out, args.seed, i, size, len(sizes), args.encoding)
          for i, size in enumerate(sizes)]
  with multiprocessing.get_context('spawn').Pool(args.workers) as pool:
    for _ in pool.imap_unordered(_write, jobs):
      pass
  array_record.write_info(args.out, NAME, '1.0.0', {'train': sizes},
                          array_record.image_features((32, 32, 3), CLASSES, args.encoding))


if __name__ == '__main__':
  main()
