"""The RealDisp builder on small synthetic logs in the UCI format, its windows and its encoder."""

import jax
import numpy as np
import pytest

from ohc_jax import configuration, models
from ohc_jax.data import input_pipeline, pipeline, sources
from ohc_jax.data import realdisp
from ohc_jax.errors import UsageError

ROWS = 600


def _subject_rows(subject: int, rng):
  """A subject's log: activity `subject` then the next, label-0 rows around them, one NaN row."""
  labels = np.repeat([0, subject, subject % 33 + 1, 0], [20, 300, ROWS - 330, 10])
  table = np.column_stack([np.arange(ROWS), np.arange(ROWS) * 1000,
                           rng.normal(size=(ROWS, 117)).round(3), labels])
  table[100, 5] = np.nan
  return table


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """(manual_dir, data_dir, tables): all 17 logs written and the tfds data set prepared once."""
  root = tmp_path_factory.mktemp('realdisp')
  manual = root / 'manual' / 'realistic_sensor_displacement'
  manual.mkdir(parents=True)
  rng = np.random.default_rng(0)
  tables = {}
  for subject in realdisp.SUBJECTS:
    tables[subject] = _subject_rows(subject, rng)
    np.savetxt(manual / f'subject{subject}_ideal.log', tables[subject], fmt='%g', delimiter='\t')
  (manual / f'subject1_self.log').write_text('not read\n')
  realdisp.load(str(root / 'tfds'), str(root / 'manual'))
  return str(root / 'manual'), str(root / 'tfds'), tables


def _expected_windows(table):
  """Brute force: rows without NaN or label 0, windows of 512 every 5, most frequent label - 1."""
  table = table[~np.isnan(table).any(1) & (table[:, -1] != 0)]
  labels = table[:, -1].astype(int)
  starts = range(0, len(table) - 512 + 1, 5)
  return table[:, 2:-1], [int(np.argmax(np.bincount(labels[s:s + 512]))) - 1 for s in starts]


def test_builder_windows_channels_and_labels(prepared):
  manual, data_dir, tables = prepared
  sequence, starts, labels, names = realdisp.load(data_dir, None)  # Prepared: no manual_dir needed.
  assert sequence.shape[1] == 117 and len(names) == 33
  expected = [_expected_windows(tables[s]) for s in realdisp.SUBJECTS]
  per_subject = (ROWS - 31 - 512) // 5 + 1  # 30 label-0 rows and a NaN row dropped.
  assert len(starts) == len(labels) == sum(len(w) for _, w in expected) == 17 * per_subject
  np.testing.assert_array_equal(labels, np.concatenate([w for _, w in expected]))
  rows = np.concatenate([r for r, _ in expected])
  np.testing.assert_allclose(sequence, rows, rtol=1e-6)
  # Windows stay within a subject: subject 2's first window starts on its first kept row.
  assert starts[per_subject] == len(expected[0][0])


def test_pipeline_serves_windows(prepared):
  manual, data_dir, _ = prepared
  config = configuration.from_file(f'{configuration.CONFIG_DIR}/realdisp.py')
  config.update(data_dir=data_dir, manual_dir=manual, imbalance=3, max_examples=150)
  configuration.validate(config)
  data = input_pipeline.load(config)
  assert data.num_classes == 33 and data.train is data.eval
  assert isinstance(data.train.images, sources.Windows)
  assert len(data.train) < 150 and data.train.images.shape[1:] == (512, 117)
  batch = next(pipeline.TrainFeed(data.train, 16, seed=0).epoch(1))
  rows = pipeline.epoch_permutation(len(data.train), 0, 1)[:16]
  assert batch['image'].shape == (16, 512, 117) and batch['image'].dtype == np.float32
  np.testing.assert_array_equal(batch['image'], data.train.images[rows])
  np.testing.assert_array_equal(batch['label'], data.train.labels[rows])
  eval_batch, valid = next(pipeline.eval_batches(data.eval, 256))
  assert valid == len(data.eval) and eval_batch['valid'].sum() == valid


def test_conv1d_encoder_gives_nz_32(prepared):
  config = configuration.from_file(f'{configuration.CONFIG_DIR}/realdisp.py')
  model = models.make_encoder(config)
  x = np.zeros((2, 512, 117), np.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  assert jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape == (2, 32)


def test_missing_files_are_named(tmp_path, prepared):
  (tmp_path / 'manual').mkdir()
  for subject in (1, 2):
    (tmp_path / 'manual' / f'subject{subject}_ideal.log').write_text('0\n')
  with pytest.raises(UsageError, match=r'subject3_ideal.log.* \(15 of 17 files\) not found under '
                                       r'--config.manual_dir=.*archive.ics.uci.edu'):
    realdisp.load(str(tmp_path / 'tfds'), str(tmp_path / 'manual'))
  with pytest.raises(UsageError, match='subject1_ideal.log'):
    realdisp.load(str(tmp_path / 'tfds'), None)


def test_malformed_log(tmp_path):
  path = tmp_path / 'subject1_ideal.log'
  path.write_text('1\t2\t3\n')
  with pytest.raises(UsageError, match='120 numeric columns'):
    realdisp.read_log(str(path))
