r"""Label new data with a trained model, point-wise (the paper's inference rule: argmin_k C[i, k]).

  python -m ohc_jax.predict --workdir=runs/digits --input=new_images/ --output=labels.csv
  python -m ohc_jax.predict --workdir=runs/c10 --input=batch.npz --output=labels.csv
  python -m ohc_jax.predict --workdir=runs/c10 --input=tfds:cifar10:test --output=labels.csv

--input is one of:
- a folder of images (.png, .jpg, .jpeg, .bmp, .gif, .webp, .tif, .tiff; searched recursively,
  taken in sorted order; id = the path relative to the folder), converted to grey or RGB as the
  model's input;
- a .npy array, or a .npz holding one (named `images`, `image`, `x` or `data`, or its only array;
  an optional `ids` array names the rows; otherwise id = the row number), shaped (N, H, W, C) or,
  for one channel, (N, H, W);
- `tfds:NAME:SPLIT` (e.g. `tfds:cifar10:test`, `tfds:mnist:test[:1000]`): a prepared tfds data set
  (under --data_dir, else the run's data_dir, else $TFDS_DATA_DIR); id = the row number.

Inputs hold pixel values as the training data set stores them (uint8 for the tfds images, 0..16 for
scikit-learn's digits) and must have the training input's height, width and channels.

The output CSV has the columns `id,cluster,cost` and, when the run evaluated on labelled data,
`class`: the class its Hungarian matching gave the cluster. It is written to a temporary file and
renamed at the end, so a failed run leaves no partial output. Batches are sharded over every local
device. Bad input: one line naming the problem, exit code 2.
"""

import argparse
import csv
import os
import sys
from typing import Iterator, Optional

import numpy as np

from ohc_jax.errors import UsageError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
NPZ_KEYS = ('images', 'image', 'x', 'data')


def _shape_str(shape) -> str:
  return '(' + ', '.join(str(d) for d in shape) + ')'


def _fit(array: np.ndarray, expected: tuple, what: str) -> np.ndarray:
  """array as a batch (N, *expected); a missing trailing channel of 1 is added."""
  if array.ndim == len(expected) and expected[-1] == 1 and tuple(array.shape[1:]) == expected[:-1]:
    array = array[..., None]
  if tuple(array.shape[1:]) != tuple(expected):
    raise UsageError(f'{what} has shape {_shape_str(array.shape)}, but the model expects '
                     f'(N, {", ".join(map(str, expected))}): give inputs of the training shape '
                     f'{_shape_str(expected)}')
  if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
          or array.dtype == np.bool_):
    raise UsageError(f'{what} has dtype {array.dtype}: give numeric pixel values')
  bad = np.size(array) - np.count_nonzero(np.isfinite(array))
  if bad:
    raise UsageError(f'{what} holds {bad} non-finite values (NaN or inf): give finite pixel values')
  return array


def _read_image(path: str, expected: tuple) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as image:
      image = image.convert('L' if expected[-1] == 1 else 'RGB')
      array = np.asarray(image)
  except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
    raise UsageError(f'cannot read the image {path} ({type(e).__name__}: '
                     f'{str(e).splitlines()[0] if str(e) else "unreadable"}): fix or remove it '
                     f'(the model expects images of shape {_shape_str(expected)})') from None
  if array.ndim == 2:
    array = array[..., None]
  if array.shape != tuple(expected):
    raise UsageError(f'the image {path} is {_shape_str(array.shape)} (height, width, channels), '
                     f'but the model expects {_shape_str(expected)}: resize it to the training '
                     f'images\' size')
  return array


def _folder_chunks(folder: str, expected: tuple, chunk: int) -> Iterator[tuple[list, np.ndarray]]:
  files = []
  for root, dirs, names in os.walk(folder):
    dirs.sort()
    for name in names:
      if name.lower().endswith(IMAGE_EXTENSIONS):
        files.append(os.path.join(root, name))
  files.sort(key=lambda p: os.path.relpath(p, folder))
  if not files:
    raise UsageError(f'no image files ({", ".join(IMAGE_EXTENSIONS)}) in {folder}')
  for start in range(0, len(files), chunk):
    part = files[start:start + chunk]
    yield ([os.path.relpath(p, folder) for p in part],
           np.stack([_read_image(p, expected) for p in part]))


def _load_array(path: str, expected: tuple) -> tuple[list, np.ndarray]:
  try:
    loaded = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise UsageError(f'cannot read {path} as {"a .npz" if path.endswith(".npz") else "an .npy"} '
                     f'file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})') \
        from None
  ids = None
  what = path
  if isinstance(loaded, np.lib.npyio.NpzFile):
    with loaded:
      keys = list(loaded.keys())
      key = next((k for k in NPZ_KEYS if k in keys), None)
      arrays = [k for k in keys if k not in ('ids', 'id')]
      if key is None and len(arrays) == 1:
        key = arrays[0]
      if key is None:
        raise UsageError(f'{path} holds the arrays {", ".join(keys) or "none"}: name the images '
                         f'{" or ".join(NPZ_KEYS)} (and the optional row names ids)')
      try:
        array = loaded[key]
        if 'ids' in keys or 'id' in keys:
          ids = [str(i) for i in loaded['ids' if 'ids' in keys else 'id'].tolist()]
      except (OSError, ValueError, EOFError) as e:
        raise UsageError(f'cannot read the array {key!r} of {path} ({type(e).__name__})') from None
      what = f'the array {key!r} of {path}'
  else:
    array = loaded
  array = _fit(np.asarray(array), expected, what)
  if ids is None:
    ids = [str(i) for i in range(len(array))]
  elif len(ids) != len(array):
    raise UsageError(f'{path}: ids has {len(ids)} entries for {len(array)} images')
  return ids, array


def _load_tfds(spec: str, expected: tuple, data_dir: Optional[str]) -> tuple[list, np.ndarray]:
  parts = spec.split(':', 2)
  if len(parts) != 3 or not parts[1] or not parts[2]:
    raise UsageError(f'--input={spec}: write a tfds data set as tfds:NAME:SPLIT, e.g. '
                     f'tfds:cifar10:test')
  _, name, split = parts
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  import tensorflow_datasets as tfds
  data_dir = data_dir or os.environ.get('TFDS_DATA_DIR')
  try:
    ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
    images = [batch['image'] for batch in tfds.as_numpy(ds.batch(4096))]
  except Exception as e:  # pylint: disable=broad-except  (tfds raises many kinds)
    raise UsageError(f'cannot load {name}:{split} from tfds under {data_dir or "~/tensorflow_datasets"}'
                     f' ({type(e).__name__}): point --data_dir at a tfds data dir that holds it')\
        from None
  array = _fit(np.concatenate(images), expected, f'{name}:{split}')
  return [str(i) for i in range(len(array))], array


def input_chunks(spec: str, expected: tuple, chunk: int,
                 data_dir: Optional[str] = None) -> Iterator[tuple[list, np.ndarray]]:
  """(ids, images) chunks of at most `chunk` rows from any supported --input."""
  if spec.startswith('tfds:'):
    ids, array = _load_tfds(spec, expected, data_dir)
  elif os.path.isdir(spec):
    yield from _folder_chunks(spec, expected, chunk)
    return
  elif not os.path.exists(spec):
    raise UsageError(f'--input={spec} does not exist: give a folder of images, a .npy/.npz file '
                     f'or tfds:NAME:SPLIT')
  elif spec.endswith(('.npy', '.npz')):
    ids, array = _load_array(spec, expected)
  else:
    raise UsageError(f'--input={spec}: not a folder, .npy or .npz file; give one of those or '
                     f'tfds:NAME:SPLIT')
  if len(array) == 0:
    raise UsageError(f'--input={spec} holds no images')
  for start in range(0, len(array), chunk):
    yield ids[start:start + chunk], array[start:start + chunk]


def predict_chunks(trained, chunks) -> Iterator[tuple[list, np.ndarray, np.ndarray]]:
  """(ids, cluster, cost) per chunk: the jitted evaluation step over every device, padded."""
  import jax

  from ohc_jax import sharding
  batch = trained.config.eval_batch_size
  for ids, images in chunks:
    n = len(images)
    if n < batch:
      pad = np.zeros((batch - n,) + images.shape[1:], images.dtype)
      images = np.concatenate([images, pad])
    out = trained.eval_step(trained.state, sharding.to_global({'image': images}, trained.mesh))
    out = jax.device_get({'cluster': out['cluster'], 'cost': out['cost']})
    yield ids, np.asarray(out['cluster'])[:n], np.asarray(out['cost'])[:n]


def class_names_of_clusters(meta: dict) -> Optional[list]:
  """cluster -> class name (or number) by the Hungarian map of the run's evaluation, or None."""
  mapping = meta.get('cluster_to_class')
  if not mapping:
    return None
  names = meta.get('class_names') or []
  return [(names[c] if c < len(names) else str(c)) if c >= 0 else '' for c in mapping]


def run(argv=None) -> int:
  """The command line; returns the exit code."""
  parser = argparse.ArgumentParser(prog='python -m ohc_jax.predict', description=__doc__.split(
      '\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, help='workdir of a training run')
  parser.add_argument('--input', required=True,
                      help='folder of images, .npy, .npz, or tfds:NAME:SPLIT')
  parser.add_argument('--output', required=True, help='CSV file to write')
  parser.add_argument('--batch_size', type=int, default=None,
                      help='images per batch over all devices (default: the run\'s eval batch)')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
  parser.add_argument('--num_devices', type=int, default=0, help='devices to use (0: all)')
  parser.add_argument('--data_dir', default=None, help='tfds data dir for tfds:NAME:SPLIT')
  args = parser.parse_args(argv)
  tmp = None
  try:
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
      raise UsageError(f'--output={args.output}: the folder {out_dir} does not exist')
    if os.path.isdir(args.output):
      raise UsageError(f'--output={args.output} is a folder: name a .csv file')
    if args.batch_size is not None and args.batch_size < 1:
      raise UsageError(f'--batch_size must be >= 1, got {args.batch_size}')
    if not (args.input.startswith('tfds:') or os.path.exists(args.input)):
      raise UsageError(f'--input={args.input} does not exist: give a folder of images, a .npy/'
                       f'.npz file or tfds:NAME:SPLIT')
    from ohc_jax.inference import load_trained
    trained = load_trained(args.workdir, step=args.step, num_devices=args.num_devices,
                           eval_batch_size=args.batch_size)
    meta = trained.meta
    expected = tuple(meta['input_shape'])
    names = class_names_of_clusters(meta)
    if names is not None and meta.get('cluster_to_class_step') != trained.step:
      print(f'warning: the cluster -> class map is from step {meta.get("cluster_to_class_step")}, '
            f'the model from step {trained.step}', file=sys.stderr)
    data_dir = args.data_dir or meta['config'].get('data_dir')
    chunks = input_chunks(args.input, expected, trained.config.eval_batch_size, data_dir)
    tmp = os.path.join(out_dir, f'.{os.path.basename(args.output)}.{os.getpid()}.tmp')
    count = 0
    with open(tmp, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['id', 'cluster', 'cost'] + (['class'] if names is not None else []))
      for ids, cluster, cost in predict_chunks(trained, chunks):
        for i, k, c in zip(ids, cluster.tolist(), cost.tolist()):
          writer.writerow([i, k, f'{c:.7g}'] + ([names[k]] if names is not None else []))
        count += len(ids)
    os.replace(tmp, args.output)
    tmp = None
    print(f'labelled {count} inputs with the model of step {trained.step}: {args.output}')
    return 0
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)


def main():
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from absl import logging
  logging.set_verbosity(logging.ERROR)  # Orbax's notes on read-only checkpoint dirs.
  sys.exit(run())


if __name__ == '__main__':
  main()
