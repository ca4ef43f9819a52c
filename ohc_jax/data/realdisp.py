"""RealDisp (Banos et al., UCI data set 305) as a tfds builder over the release's log files.

Each `subjectN_ideal.log` (N = 1..17; the 'ideal' sensor placement, as the reference) holds one row
per time step (50 Hz), whitespace-separated: 2 timestamp columns, 117 sensor columns (9 sensors x
13 values) and the activity label (0: no activity, 1..33). As the reference: rows with a NaN or
label 0 are dropped, windows of 512 rows start every 5 rows, a window's label is its most frequent
row label (ties: the smaller), labels 1..33 become classes 0..32, sensor values are kept raw.
Difference: the reference windows the concatenation of all subjects, so ~100 windows per subject
boundary mix two subjects; here windows stay within a subject. Its lines: docs/fidelity.md.

The builder stores each subject's rows once with its windows' start rows and labels (the windows
overlap 100-fold: storing them would take ~100x the space); `load` returns them ready for
`sources.Windows`. It imports TensorFlow: only tfds_cache's child process (and tests) import
this module, and training memory-maps what the child cached.
"""

import glob
import os
import warnings

import numpy as np
import tensorflow_datasets as tfds

from ohc_jax.errors import UsageError

WINDOW, STEP = 512, 5
NUM_CHANNELS = 117
SUBJECTS = tuple(range(1, 18))
URL = 'https://archive.ics.uci.edu/dataset/305/realdisp+activity+recognition+dataset'
ACTIVITIES = (
    'walking', 'jogging', 'running', 'jump up', 'jump front and back', 'jump sideways',
    'jump leg/arms open/closed', 'jump rope', 'trunk twist (arms outstretched)',
    'trunk twist (elbows bent)', 'waist bends forward', 'waist rotation',
    'waist bends (reach foot with opposite hand)', 'reach heels backwards', 'lateral bend',
    'lateral bend with arm up', 'repetitive forward stretching',
    'upper trunk and lower body opposite twist', 'lateral elevation of arms',
    'frontal elevation of arms', 'frontal hand claps', 'frontal crossing of arms',
    'shoulders high-amplitude rotation', 'shoulders low-amplitude rotation', 'arms inner rotation',
    'knees (alternating) to the breast', 'heels (alternating) to the backside',
    'knees bending (crouching)', 'knees (alternating) bending forward', 'rotation on the knees',
    'rowing', 'elliptical bike', 'cycling')


def log_files(manual_dir: str) -> dict:
  """subject -> path of its subjectN_ideal.log anywhere under manual_dir."""
  found = {}
  for subject in SUBJECTS:
    paths = sorted(glob.glob(os.path.join(manual_dir, '**', f'subject{subject}_ideal.log'),
                             recursive=True))
    if paths:
      found[subject] = paths[0]
  return found


def check_manual_dir(manual_dir) -> dict:
  """The log files, or UsageError naming the missing ones and where to get them."""
  found = log_files(manual_dir) if manual_dir and os.path.isdir(manual_dir) else {}
  missing = [f'subject{s}_ideal.log' for s in SUBJECTS if s not in found]
  if missing:
    raise UsageError(
        f'realdisp: {", ".join(missing[:3])}{" ..." if len(missing) > 3 else ""} '
        f'({len(missing)} of {len(SUBJECTS)} files) not found under --config.manual_dir='
        f'{manual_dir}: download the release from {URL}, unzip it and point manual_dir at the '
        f'folder that holds subject1_ideal.log ... subject17_ideal.log')
  return found


def read_log(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(sensors (T, 117) float32, labels (T,) int64) of one log, NaN rows and label 0 dropped."""
  with open(path) as f:
    text = f.read().strip()
  with warnings.catch_warnings():  # A token that is no number ends the parse (and warns).
    warnings.simplefilter('ignore', DeprecationWarning)
    values = np.fromstring(text, sep=' ')  # Any whitespace separates.
  width = 2 + NUM_CHANNELS + 1
  lines = text.count('\n') + 1 if text else 0
  if values.size != lines * width:
    raise UsageError(f'{path} is not a RealDisp log: expected {width} numeric columns per line')
  table = values.reshape(lines, width)
  table = table[~np.isnan(table).any(axis=1)]
  labels = table[:, -1].astype(np.int64)
  if labels.min(initial=0) < 0 or labels.max(initial=0) > len(ACTIVITIES):
    raise UsageError(f'{path}: activity labels must lie in 0..{len(ACTIVITIES)}')
  keep = labels != 0
  return table[keep, 2:-1].astype(np.float32), labels[keep]


def windows(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(start rows, classes 0..32) of the windows of one subject's rows."""
  count = (len(labels) - WINDOW) // STEP + 1 if len(labels) >= WINDOW else 0
  starts = np.arange(count, dtype=np.int64) * STEP
  cumulative = np.zeros((len(labels) + 1, len(ACTIVITIES) + 1), np.int32)
  np.cumsum(np.eye(len(ACTIVITIES) + 1, dtype=np.int32)[labels], axis=0, out=cumulative[1:])
  counts = cumulative[starts + WINDOW] - cumulative[starts]
  return starts, np.argmax(counts, axis=1) - 1  # argmax: the first (smallest) most frequent.


class Realdisp(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """One example per subject: its rows and its windows' start rows and classes."""
  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = (f'Download the release from {URL}, unzip it and pass its folder '
                                  f'(subject1_ideal.log ... subject17_ideal.log) as manual_dir.')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__.split('\n\n')[0], homepage=URL,
        features=tfds.features.FeaturesDict({
            'subject': tfds.features.Scalar(np.int32),
            'sensors': tfds.features.Tensor(shape=(None, NUM_CHANNELS), dtype=np.float32),
            'window_starts': tfds.features.Tensor(shape=(None,), dtype=np.int64),
            'window_labels': tfds.features.Tensor(shape=(None,), dtype=np.int64),
        }))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(check_manual_dir(str(dl_manager.manual_dir)))}

  def _generate_examples(self, files):
    for subject, path in sorted(files.items()):
      sensors, labels = read_log(path)
      starts, classes = windows(labels)
      yield subject, {'subject': subject, 'sensors': sensors, 'window_starts': starts,
                      'window_labels': classes}


def prepared(data_dir, manual_dir) -> Realdisp:
  """The builder of the tfds data set, prepared from manual_dir first if data_dir (or
  $TFDS_DATA_DIR) does not hold it."""
  builder = Realdisp(data_dir=data_dir or os.environ.get('TFDS_DATA_DIR'))
  if not builder.is_prepared():
    check_manual_dir(manual_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.path.abspath(manual_dir)))
  return builder


def read(builder: Realdisp):
  """(rows (T, 117), window start rows, window classes, class names) of all subjects."""
  examples = sorted(tfds.as_numpy(builder.as_dataset(split='train')), key=lambda e: e['subject'])
  offsets = np.cumsum([0] + [len(e['sensors']) for e in examples])
  sequence = np.concatenate([e['sensors'] for e in examples])
  starts = np.concatenate([e['window_starts'] + o for e, o in zip(examples, offsets)])
  labels = np.concatenate([e['window_labels'] for e in examples])
  return sequence, starts, labels, ACTIVITIES


def load(data_dir, manual_dir):
  """read(prepared(data_dir, manual_dir)): what tfds_cache's child process caches."""
  return read(prepared(data_dir, manual_dir))
