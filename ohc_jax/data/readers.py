"""The one reader of inputs, for training (input_pipeline) and labelling (predict) alike:

- array files: a .npz holds `x` (the inputs, one row each), `y` (their labels; for training) and
  optionally `ids` (row names); a .npy holds x alone, its labels in FILE_labels.npy beside it;
- image folders: .png, .jpg, .jpeg, .bmp, .gif, .webp, .tif, .tiff files, searched recursively and
  taken in the sorted order of their paths relative to the folder, decoded by Pillow;
- tfds data sets: splits read in order into one array, decoded once in a child process and
  cached (tfds_cache.py: TensorFlow is loaded there and only there).

How images are stored and resized (images.py) is shared with tfds_cache and streaming, re-exported
here so that readers is the one place the rest of the package reads inputs through.

Bad input raises a one-line UsageError naming the file and the fix.
"""

import os
import zipfile
import zlib
from typing import Optional, Sequence

import numpy as np

from ohc_jax.data.images import image_encoding, resize_crop  # noqa: F401  (re-exported)
from ohc_jax.errors import UsageError, first_line

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
ARRAY_CONVENTION = 'x (inputs), y (labels) and optionally ids (row names)'


def _load(path: str, mmap: bool = False):
  try:
    return np.load(path, mmap_mode='r' if mmap else None, allow_pickle=False)
  except zipfile.BadZipFile as e:
    raise UsageError(f'cannot read {path} as a .npz file (truncated, or not a zip: '
                     f'{first_line(e)}): write it again with numpy.savez') from None
  except (OSError, ValueError, EOFError) as e:
    raise UsageError(f'cannot read {path} as {"a .npz" if path.endswith(".npz") else "an .npy"} '
                     f'file ({first_line(e)}): write it with numpy.save or numpy.savez') from None


def read_arrays(path: str, labels: bool, mmap: bool = False) -> tuple[
    np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
  """(x, y, ids) of a .npz or .npy file; y is read only when `labels`, ids may be None. mmap: .npy
  files come memory-mapped, read-only, so nothing is read until used (a .npz, a zip, is read)."""
  loaded = _load(path, mmap)
  if not isinstance(loaded, np.lib.npyio.NpzFile):
    if not labels:
      return loaded, None, None
    labels_path = path[:-4] + '_labels.npy'
    if not os.path.isfile(labels_path):
      raise UsageError(f'{path} needs its labels in {labels_path} (or give a .npz holding '
                       f'{ARRAY_CONVENTION})')
    return loaded, _load(labels_path, mmap), None
  with loaded:
    needed = ('x', 'y') if labels else ('x',)
    if not set(needed) <= set(loaded.files):
      raise UsageError(f'{path} holds the arrays {", ".join(sorted(loaded.files)) or "none"}; an '
                       f'array file holds {ARRAY_CONVENTION}: save it with numpy.savez(FILE, '
                       f'{", ".join(f"{k}=..." for k in needed)})')
    try:
      return (loaded['x'], loaded['y'] if labels else None,
              loaded['ids'] if 'ids' in loaded.files else None)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
      raise UsageError(f'cannot read the arrays of {path} ({first_line(e)}): write it again with '
                       f'numpy.savez') from None


def image_files(folder: str) -> list[str]:
  """The image files under folder (recursively), sorted by their path relative to it."""
  files = []
  for root, _, names in os.walk(folder):
    files += [os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
  return sorted(files, key=lambda p: os.path.relpath(p, folder))


def read_image(path: str, channels: int) -> np.ndarray:
  """An image as a (height, width, channels) uint8 array: grey for 1 channel, else RGB."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as image:
      array = np.asarray(image.convert('L' if channels == 1 else 'RGB'))
  except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
    raise UsageError(f'cannot read the image {path} ({first_line(e)}): fix or remove it') from None
  return array[..., None] if array.ndim == 2 else array


def read_tfds(name: str, splits: Sequence[str], data_dir: Optional[str], fix: str,
              label_key: Optional[str] = None, download: bool = False, image_key: str = 'image',
              image_size: int = 0):
  """(images, labels or None, rows per split, {'num_classes', 'names'}) of the splits of a tfds
  data set, in order, in one array: decoded once and cached (tfds_cache), read-only; image_size
  N > 0: each image's shorter side resized to N and its centre cropped to N x N."""
  import ohc_jax.data.tfds_cache as tfds_cache
  images, labels, info = tfds_cache.load(name, splits, data_dir, fix, label_key, download,
                                         image_key, image_size)
  return images, labels, info['sizes'], info
