"""Data sets and their feeds. The rest of the package uses what this surface names:

- loading: `load(config) -> Data` (two sources and how to normalise their inputs), `input_mode`,
  and for validating a config `loader`, `is_tfds`, `DATASETS`, `PATH_DATASETS`;
- feeding (one Grain pipeline over any source, memory or stream mode): `train_feed`,
  `eval_batches`, `eval_rows`, `epoch_permutation`, `read_rows`, `sample_images`, `pad_rows`;
  `ImageSource`, an ArrayRecord folder read directly (the input benchmark).

Inside: input_pipeline.py (the loaders), sources.py (what is read by index: a split in memory, a
memory-mapped file, ArrayRecord records), pipeline.py (the Grain feeds), readers.py (array files,
image folders, tfds), tfds_cache.py (tfds splits decoded once in a child process), array_record.py
(writing ArrayRecord sets), realdisp.py.
"""

from ohc_jax.data.input_pipeline import (DATASETS, PATH_DATASETS, Data, input_mode, is_tfds, load,
                                         loader)
from ohc_jax.data.pipeline import (epoch_permutation, eval_batches, eval_rows, pad_rows,
                                   read_rows, sample_images, train_feed)
from ohc_jax.data.sources import ImageSource, Split
