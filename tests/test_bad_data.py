"""Bad array data is refused at load (issue 23 item 4; issue 24 items 5, 6): non-finite inputs,
complex inputs, labels that are not class numbers, mismatched lengths and a truncated .npz each give
one line naming the file, the first bad row and the fix; from the command line, exit 2 before
anything is written to the workdir."""

import os
import subprocess
import sys

import numpy as np
import pytest

from ohc_jax import configuration
from ohc_jax.data import input_pipeline
from ohc_jax.errors import UsageError


def _x(n=300, d=5):
  return np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)


def _y(n=300):
  return np.arange(n) % 3


def _with(row, value, dtype=np.float64):
  x = _x().astype(dtype)
  x[row, 2] = value
  return x


# name -> (x, y, what the error line says besides the file).
CASES = {
    'nan': (_with(17, np.nan), _y(), ['x row 17', 'nan', 'nan_to_num']),
    'inf': (_with(250, -np.inf), _y(), ['x row 250', '-inf', 'nan_to_num']),
    'beyond_float32': (_with(3, 1e300), _y(), ['x row 3', '1e+300', 'finite float32']),
    'complex': (_x() + 1j, _y(), ['complex', 'x.real, x.imag']),
    'negative_labels': (_x(), _y() - 1, ['label row 0 is -1', 'number the classes from 0']),
    'fractional_labels': (_x(), np.where(np.arange(300) == 41, 1.5, _y()), ['label row 41 is 1.5',
                                                                           'not an integer']),
    'nan_label': (_x(), np.where(np.arange(300) == 9, np.nan, _y()), ['label row 9 is nan']),
    'fewer_labels': (_x(), _y(299), ['300 rows and y 299 labels', 'row 299 has no partner',
                                     'one label per row']),
    'more_labels': (_x(), _y(301), ['300 rows', 'row 300 has no partner']),
}


def _config(path, **overrides):
  c = configuration.from_file(os.path.join(configuration.CONFIG_DIR, 'default.py'))
  c.update(dataset=f'vectors:{path}', num_clusters=3, progress_bar=False, **overrides)
  return c


def _write(tmp_path, name, x, y, form):
  if form == 'npz':
    path = tmp_path / f'{name}.npz'
    np.savez(path, x=x, y=y)
  else:
    path = tmp_path / f'{name}.npy'
    np.save(path, x)
    np.save(tmp_path / f'{name}_labels.npy', y)
  return str(path)


@pytest.mark.parametrize('form', ['npz', 'npy'])
@pytest.mark.parametrize('name', sorted(CASES))
def test_bad_vectors_are_one_line_naming_file_row_and_fix(tmp_path, name, form):
  x, y, says = CASES[name]
  path = _write(tmp_path, name, x, y, form)
  modes = ('memory', 'stream') if form == 'npy' else ('memory',)
  for mode in modes:
    with pytest.raises(UsageError) as e:
      input_pipeline.load(_config(path, input_mode=mode))
    message = str(e.value)
    assert '\n' not in message and message.startswith(path), message
    for part in says:
      assert part in message, (mode, message)


def test_integer_valued_float_labels_and_sparse_class_numbers_still_load(tmp_path):
  path = _write(tmp_path, 'ok', _x(), (_y() * 10).astype(np.float64), 'npz')
  data = input_pipeline.load(_config(path))
  assert data.num_classes == 3 and data.class_names == ('0', '10', '20')
  np.testing.assert_array_equal(data.train.labels, _y())


def test_non_finite_row_found_past_the_first_chunk_of_a_memory_mapped_file(tmp_path):
  x = _x(70_000, 2)
  x[66_000, 1] = np.inf
  path = _write(tmp_path, 'big', x, _y(70_000), 'npy')
  with pytest.raises(UsageError, match='x row 66000 holds inf'):
    input_pipeline.load(_config(path, input_mode='stream'))


def test_a_truncated_npz_is_one_line(tmp_path):
  good = _write(tmp_path, 'good', _x(), _y(), 'npz')
  for size in (2000, 200):
    path = tmp_path / f'trunc{size}.npz'
    path.write_bytes(open(good, 'rb').read()[:size])
    with pytest.raises(UsageError, match=f'cannot read {path} as a .npz file .truncated, or not a '
                                         f'zip: .*numpy.savez'):
      input_pipeline.load(_config(str(path)))


@pytest.mark.slow  # Starts a process per case.
@pytest.mark.parametrize('name', sorted(CASES) + ['truncated'])
def test_main_exits_2_with_one_error_line_and_writes_nothing(tmp_path, name):
  if name == 'truncated':
    good = _write(tmp_path, 'good', _x(), _y(), 'npz')
    path = tmp_path / 'truncated.npz'
    path.write_bytes(open(good, 'rb').read()[:2000])
  else:
    path = _write(tmp_path, name, *CASES[name][:2], 'npz')
  workdir = tmp_path / 'run'
  out = subprocess.run([sys.executable, '-m', 'ohc_jax.main', f'--workdir={workdir}',
                        f'--config.dataset=vectors:{path}', '--config.num_clusters=3'],
                       capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 2, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and str(path) in lines[0], out.stderr
  assert not workdir.exists() or not os.listdir(workdir)
