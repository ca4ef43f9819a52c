r"""Label new data with a trained model, point-wise (the paper's inference rule: argmin_k C[i, k]).

  python -m ohc_jax.predict --workdir=runs/digits --input=new_images/ --output=labels.csv
  python -m ohc_jax.predict --workdir=runs/c10 --input=batch.npz --output=labels.csv
  python -m ohc_jax.predict --workdir=runs/c10 --input=tfds:cifar10:test --output=labels.csv

--input is one of (read by ohc_jax.data.readers, as training reads its data):
- a folder of images (.png, .jpg, .jpeg, .bmp, .gif, .webp, .tif, .tiff; searched recursively,
  taken in sorted order; id = the path relative to the folder), converted to grey or RGB as the
  model's input;
- a .npz holding `x` (the inputs; optionally `ids` naming the rows, otherwise id = the row number;
  a `y` is ignored), or a .npy holding x; shaped (N, H, W, C) or, for one channel, (N, H, W);
- `tfds:NAME:SPLIT` (e.g. `tfds:cifar10:test`, `tfds:cifar10:3.0.2:test`, `tfds:mnist:test[:1000]`):
  a prepared tfds data set (under --data_dir, else the run's data_dir, else $TFDS_DATA_DIR), its
  feature the run's image_key, resized as the run's image_size resized; id = the row number.

Inputs hold pixel values as the training data set stores them (uint8 for the tfds images, 0..16 for
scikit-learn's digits) and must have the training input's height, width and channels.

The output CSV has the columns `id,cluster,cost` and, when the run evaluated on labelled data,
`class`: the class its Hungarian matching gave the cluster. It is written to a temporary file
beside it and renamed at the end, so a failed run leaves no partial output and an earlier CSV there
as it was. Batches are sharded over every local device. Bad input: one line naming the problem,
exit code 2; a failed write (a full disk): one line naming the fix, exit code 1.
"""

import csv
import os
import re
import sys
from typing import Iterator, Optional

from ohc_jax import cli  # pylint: disable=g-bad-import-order  (first: quiet TensorFlow and XLA)

import numpy as np
from absl import flags, logging

from ohc_jax.data import readers
from ohc_jax.errors import UsageError, WriteFailed, writing


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


def _folder_chunks(folder: str, expected: tuple, chunk: int) -> Iterator[tuple[list, np.ndarray]]:
  files = readers.image_files(folder)
  if not files:
    raise UsageError(f'no image files ({", ".join(readers.IMAGE_EXTENSIONS)}) in {folder}')
  for start in range(0, len(files), chunk):
    part = files[start:start + chunk]
    images = []
    for path in part:
      try:
        image = readers.read_image(path, expected[-1])
      except UsageError as e:
        raise UsageError(f'{e} (the model expects images of shape {_shape_str(expected)})') \
            from None
      if image.shape != tuple(expected):
        raise UsageError(f'the image {path} is {_shape_str(image.shape)} (height, width, '
                         f'channels), but the model expects {_shape_str(expected)}: resize it to '
                         f'the training images\' size')
      images.append(image)
    yield [os.path.relpath(p, folder) for p in part], np.stack(images)


def _load_array(path: str, expected: tuple) -> tuple[list, np.ndarray]:
  x, _, ids = readers.read_arrays(path, labels=False)
  what = f'the array x of {path}' if path.endswith('.npz') else path
  array = _fit(np.asarray(x), expected, what)
  if ids is None:
    return [str(i) for i in range(len(array))], array
  if len(ids) != len(array):
    raise UsageError(f'{path}: ids has {len(ids)} entries for {len(array)} inputs')
  return [str(i) for i in ids.tolist()], array


# tfds:NAME[:VERSION]:SPLIT; the split spec may hold colons itself ('test[:64]').
_TFDS_SPEC = re.compile(r'tfds:(?P<name>[^:\[\]]+(?::[\d*]+(?:\.[\d*]+)*)?):(?P<split>.+)')


def tfds_name_and_split(spec: str) -> tuple[str, str]:
  """('NAME[:VERSION]', 'SPLIT') of --input=tfds:NAME[:VERSION]:SPLIT, e.g. ('cifar10:3.0.2',
  'test[:64]') of tfds:cifar10:3.0.2:test[:64]."""
  match = _TFDS_SPEC.fullmatch(spec)
  if not match or not match['split'].strip():
    raise UsageError(f'--input={spec}: write a tfds data set as tfds:NAME:SPLIT or '
                     f'tfds:NAME:VERSION:SPLIT, e.g. tfds:cifar10:test[:64] or '
                     f'tfds:cifar10:3.0.2:test')
  return match['name'], match['split']


def _load_tfds(spec: str, expected: tuple, data_dir: Optional[str], image_key: str,
               image_size: int) -> tuple[list, np.ndarray]:
  name, split = tfds_name_and_split(spec)
  images, _, _, _ = readers.read_tfds(name, [split], data_dir,
                                      fix='point --data_dir at a tfds data dir that holds it',
                                      image_key=image_key, image_size=image_size)
  array = _fit(images, expected, f'{name}:{split}')
  return [str(i) for i in range(len(array))], array


def input_chunks(spec: str, expected: tuple, chunk: int, data_dir: Optional[str] = None,
                 image_key: str = 'image', image_size: int = 0) -> Iterator[tuple[list, np.ndarray]]:
  """(ids, images) chunks of at most `chunk` rows from any supported --input (a tfds set's
  image_key feature, resized to image_size as training resized it)."""
  if spec.startswith('tfds:'):
    ids, array = _load_tfds(spec, expected, data_dir, image_key, image_size)
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
  from ohc_jax import data as data_lib
  for ids, images in chunks:
    images, real = data_lib.pad_rows(images, trained.config.eval_batch_size)
    out = trained.eval_step(trained.state, sharding.to_global({'image': images}, trained.mesh))
    out = jax.device_get({'cluster': out['cluster'], 'cost': out['cost']})
    yield ids, np.asarray(out['cluster'])[real], np.asarray(out['cost'])[real]


def class_names_of_clusters(meta: dict) -> Optional[list]:
  """cluster -> class name (or number) by the Hungarian map of the run's evaluation, or None."""
  mapping = meta.get('cluster_to_class')
  if not mapping:
    return None
  names = meta.get('class_names') or []
  return [(names[c] if c < len(names) else str(c)) if c >= 0 else '' for c in mapping]


def parse_flags(argv, flag_values) -> list:

  def define(fv):
    flags.DEFINE_string('workdir', None, 'workdir of a training run', flag_values=fv)
    flags.DEFINE_string('input', None, 'folder of images, .npy, .npz, or tfds:NAME:SPLIT',
                        flag_values=fv)
    flags.DEFINE_string('output', None, 'CSV file to write', flag_values=fv)
    flags.DEFINE_integer('batch_size', None, 'images per batch over all devices (default: the '
                         'run\'s eval batch)', flag_values=fv)
    flags.DEFINE_integer('step', None, 'checkpoint step (default: latest)', flag_values=fv)
    flags.DEFINE_integer('num_devices', 0, 'devices to use (0: all)', flag_values=fv)
    flags.DEFINE_string('data_dir', None, 'tfds data dir for tfds:NAME:SPLIT', flag_values=fv)
    for name in ('workdir', 'input', 'output'):
      flags.mark_flag_as_required(name, flag_values=fv)

  return cli.parse_flags(argv, flag_values, define)


def predict(args, rest) -> None:
  """The command: labels --input into the CSV --output (args: the parsed flags)."""
  if rest:
    raise UsageError(f'unexpected arguments {" ".join(rest)}: write flags as --NAME=VALUE')
  tmp = None
  try:
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
      raise UsageError(f'--output={args.output}: the folder {out_dir} does not exist')
    if os.path.isdir(args.output):
      raise UsageError(f'--output={args.output} is a folder: name a .csv file')
    if args.batch_size is not None and args.batch_size < 1:
      raise UsageError(f'--batch_size must be >= 1, got {args.batch_size}')
    if args.input.startswith('tfds:'):
      tfds_name_and_split(args.input)  # Before the model loads.
    elif not os.path.exists(args.input):
      raise UsageError(f'--input={args.input} does not exist: give a folder of images, a .npy/'
                       f'.npz file or tfds:NAME:SPLIT')
    tmp = os.path.join(out_dir, f'.{os.path.basename(args.output)}.{os.getpid()}.tmp')
    try:  # Before the model loads: a folder that cannot be written fails at once.
      open(tmp, 'w').close()
    except OSError as e:
      raise UsageError(f'cannot write --output={args.output} ({e.strerror or e}): name a .csv file '
                       f'in a folder you can write') from None
    from ohc_jax.run import workdir_lock
    from ohc_jax.run.inference import load_trained
    workdir_lock.note_if_unfinished(args.workdir)
    trained = load_trained(args.workdir, step=args.step, num_devices=args.num_devices,
                           eval_batch_size=args.batch_size)
    meta = trained.meta
    expected = tuple(meta['input_shape'])
    names = class_names_of_clusters(meta)
    if names is not None and meta.get('cluster_to_class_step') != trained.step:
      print(f'warning: the cluster -> class map is from step {meta.get("cluster_to_class_step")}, '
            f'the model from step {trained.step}', file=sys.stderr)
    data_dir = args.data_dir or meta['config'].get('data_dir')
    chunks = input_chunks(args.input, expected, trained.config.eval_batch_size, data_dir,
                          trained.config.image_key, trained.config.image_size)

    def write(mode, rows):  # Only the writes: an OSError of the inputs' reads is not the CSV's.
      with writing(args.output, 'the labels'), open(tmp, mode, newline='') as f:
        csv.writer(f).writerows(rows)

    count = 0
    try:
      write('w', [['id', 'cluster', 'cost'] + (['class'] if names is not None else [])])
      for ids, cluster, cost in predict_chunks(trained, chunks):
        write('a', [[i, k, f'{c:.7g}'] + ([names[k]] if names is not None else [])
                    for i, k, c in zip(ids, cluster.tolist(), cost.tolist())])
        count += len(ids)
      with writing(args.output, 'the labels'):
        os.replace(tmp, args.output)
    except WriteFailed as e:  # A full disk: one line, exit 1; an earlier CSV there is untouched.
      raise e.with_fix(out_dir, 'then rerun') from None
    tmp = None
    print(f'labelled {count} inputs with the model of step {trained.step}: {args.output}')
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)


def run(argv) -> int:
  """The command line on argv (without the program name), in-process; returns the exit code."""
  return cli.run(predict, parse_flags, ['ohc_jax.predict', *argv])


if __name__ == '__main__':
  # ERROR: not Orbax's notes on read-only checkpoint dirs.
  cli.main(predict, parse_flags, absl_verbosity=logging.ERROR)
