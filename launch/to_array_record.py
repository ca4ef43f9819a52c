r"""Copies a prepared tfds data set from TFRecord into ArrayRecord, the random-access format
stream mode reads, ahead of time (stream mode makes such a copy in its cache by itself:
ohc_jax/data/prepare.py; ohc_jax/data/sources.py reads it; `tfds convert_format` does this too, but needs
Apache Beam).

  python launch/to_array_record.py /work/shared/data/tfds/cifar10/3.0.2 /tmp/tfds_ar/cifar10/3.0.2
  python launch/to_array_record.py SRC /tmp/tfds_ar/cifar10_raw/3.0.2 --encoding=raw

--encoding=png (the default) copies records byte for byte, shard for shard. --encoding=raw stores
each fixed-size uint8 image as its raw bytes, a tfds Tensor feature, as stream mode's own copy in
the cache does (prepare.raw_images): 1.3x CIFAR-10's PNGs on disk, and streamed without decoding
(docs/benchmarks.md). Either way dataset_info.json says array_record, and the copy is a tfds data
set that tfds reads too.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ohc_jax.data import prepare  # noqa: E402
from ohc_jax.errors import UsageError  # noqa: E402


def convert(src: str, out: str, encoding: str = 'png') -> None:
  if encoding == 'raw' and prepare.raw_images(src) is None:
    raise UsageError(f'{src}: --encoding=raw needs a fixed-size uint8 Image feature: use '
                     f'--encoding=png')
  prepare.convert(src, out, raw=encoding == 'raw')


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('src', help='a prepared tfds data set: DATA_DIR/NAME/VERSION')
  parser.add_argument('out', help='where the ArrayRecord copy goes: OUT_DIR/NAME/VERSION')
  parser.add_argument('--encoding', choices=('png', 'raw'), default='png')
  args = parser.parse_args()
  try:
    convert(args.src, args.out, args.encoding)
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
