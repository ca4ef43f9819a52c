"""`python -m ohc_jax.predict`: the labels of the evaluation pass, from images, .npz and .npy; bad
input gives one line, exit code 2 and no output file; a full disk one line, exit code 1, and leaves
an earlier CSV as it was."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ohc_jax import configuration, predict
from ohc_jax.data import input_pipeline, sources
from ohc_jax.run import evaluation, train
from ohc_jax.configuration import CONFIG_DIR
from ohc_jax.run.inference import load_trained
from disk_faults import mounted

pytestmark = pytest.mark.slow  # Every test uses a module fixture that trains a model.

REPO = os.path.dirname(CONFIG_DIR)
N = 50


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A finished digits run, N of its evaluation images in each input form, and the labels and
  costs the evaluation pass gives them."""
  c = configuration.from_file(os.path.join(CONFIG_DIR, 'default.py'))
  c.update(num_epochs=2, progress_bar=False, plots_every_epochs=0)
  root = tmp_path_factory.mktemp('predict')
  workdir = root / 'run'
  train.train_and_evaluate(c, str(workdir))
  images = input_pipeline.load(c).eval.images[-N:]  # (N, 8, 8, 1) uint8, values 0..16.
  folder = root / 'images'
  (folder / 'sub').mkdir(parents=True)
  for i, image in enumerate(images):  # Sorted order of relative paths = row order.
    Image.fromarray(image[..., 0]).save(folder / ('sub' if i >= 40 else '') / f'{i:03d}.png')
  np.savez(root / 'images.npz', x=images, y=np.zeros(N))  # y: ignored.
  np.savez(root / 'named.npz', x=images, ids=np.array([f'p{i}' for i in range(N)]))
  np.save(root / 'images.npy', images[..., 0])  # (N, 8, 8): the channel axis may be left out.
  trained = load_trained(str(workdir))
  split = sources.Split(images, np.zeros(N, np.int64))
  reference = evaluation.evaluate(trained.eval_step, trained.state, split, trained.config,
                             trained.mesh).outputs
  return {'workdir': workdir, 'root': root, 'folder': folder, 'reference': reference,
          'map': json.loads((workdir / 'cluster_map.json').read_text())}


def _read(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _check(rows, run):
  assert len(rows) == N
  clusters = np.array([int(r['cluster']) for r in rows])
  np.testing.assert_array_equal(clusters, run['reference']['cluster'])
  np.testing.assert_allclose([float(r['cost']) for r in rows], run['reference']['cost'],
                             rtol=1e-5, atol=1e-6)
  names = run['map']['cluster_to_class_name']
  assert [r['class'] for r in rows] == [names[k] for k in clusters]


def test_npz_and_npy_give_the_labels_of_the_evaluation_pass(run, tmp_path):
  for name in ('images.npz', 'images.npy'):
    out = tmp_path / f'{name}.csv'
    assert predict.run([f'--workdir={run["workdir"]}', f'--input={run["root"] / name}',
                        f'--output={out}', '--batch_size=16']) == 0
    rows = _read(out)
    assert [r['id'] for r in rows] == [str(i) for i in range(N)]
    _check(rows, run)
  out = tmp_path / 'named.csv'
  assert predict.run([f'--workdir={run["workdir"]}', f'--input={run["root"] / "named.npz"}',
                      f'--output={out}']) == 0
  rows = _read(out)
  assert [r['id'] for r in rows] == [f'p{i}' for i in range(N)]
  _check(rows, run)


def test_folder_of_images_on_the_command_line(run, tmp_path):
  out = tmp_path / 'labels.csv'
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, '-m', 'ohc_jax.predict', f'--workdir={run["workdir"]}',
                         f'--input={run["folder"]}', f'--output={out}'], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = _read(out)
  assert rows[0]['id'] == '000.png' and rows[-1]['id'] == os.path.join('sub', f'{N - 1:03d}.png')
  _check(rows, run)


def _bad(args, tmp_path, capsys):
  out = tmp_path / 'out' / 'labels.csv'
  out.parent.mkdir(exist_ok=True)
  assert predict.run(args + [f'--output={out}']) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and '\n' not in err, err
  assert os.listdir(out.parent) == []  # No output, no partial file.
  return err


def test_bad_workdirs(run, tmp_path, capsys):
  good_input = f'--input={run["root"] / "images.npz"}'
  err = _bad([f'--workdir={tmp_path / "nope"}', good_input], tmp_path, capsys)
  assert 'does not exist' in err
  (tmp_path / 'empty').mkdir()
  err = _bad([f'--workdir={tmp_path / "empty"}', good_input], tmp_path, capsys)
  assert 'holds no checkpoint' in err


def test_bad_inputs_name_the_first_bad_file_and_the_expected_shape(run, tmp_path, capsys):
  workdir = f'--workdir={run["workdir"]}'
  np.savez(tmp_path / 'wrong.npz', x=np.zeros((4, 9, 9, 1), np.uint8))
  err = _bad([workdir, f'--input={tmp_path / "wrong.npz"}'], tmp_path, capsys)
  assert '(4, 9, 9, 1)' in err and '(8, 8, 1)' in err
  (tmp_path / 'garbage.npy').write_bytes(b'not numpy')
  err = _bad([workdir, f'--input={tmp_path / "garbage.npy"}'], tmp_path, capsys)
  assert 'garbage.npy' in err
  folder = tmp_path / 'images'
  folder.mkdir()
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / 'a.png')
  (folder / 'b.png').write_bytes(b'\x89PNG truncated')
  Image.fromarray(np.zeros((9, 9), np.uint8)).save(folder / 'c.png')
  err = _bad([workdir, f'--input={folder}'], tmp_path, capsys)
  assert 'b.png' in err and 'c.png' not in err and '(8, 8, 1)' in err
  (folder / 'b.png').unlink()
  err = _bad([workdir, f'--input={folder}'], tmp_path, capsys)
  assert 'c.png' in err and '(9, 9, 1)' in err and '(8, 8, 1)' in err
  np.savez(tmp_path / 'images.npz', images=np.zeros((4, 8, 8, 1), np.uint8))
  err = _bad([workdir, f'--input={tmp_path / "images.npz"}'], tmp_path, capsys)
  assert 'holds the arrays images' in err and 'x (inputs)' in err
  np.savez(tmp_path / 'ids.npz', x=np.zeros((4, 8, 8, 1), np.uint8), ids=np.arange(3))
  err = _bad([workdir, f'--input={tmp_path / "ids.npz"}'], tmp_path, capsys)
  assert 'ids has 3 entries for 4 inputs' in err
  err = _bad([workdir, f'--input={tmp_path / "missing.npz"}'], tmp_path, capsys)
  assert 'does not exist' in err
  nan = np.full((4, 8, 8, 1), np.nan, np.float32)
  nan[0] = 0  # Not one row of garbage labels either.
  np.save(tmp_path / 'nan.npy', nan)
  err = _bad([workdir, f'--input={tmp_path / "nan.npy"}'], tmp_path, capsys)
  assert '192 non-finite values' in err and 'nan.npy' in err


def test_bad_input_on_the_command_line_exits_2_with_one_line(run, tmp_path):
  np.save(tmp_path / 'wrong.npy', np.zeros((3, 8, 8, 3), np.uint8))
  out = tmp_path / 'labels.csv'
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, '-m', 'ohc_jax.predict', f'--workdir={run["workdir"]}',
                         f'--input={tmp_path / "wrong.npy"}', f'--output={out}'], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith('error: ')
  assert '(8, 8, 1)' in proc.stderr
  assert sorted(os.listdir(tmp_path)) == ['wrong.npy']


def test_a_full_disk_is_one_line_and_leaves_the_earlier_csv_as_it_was(run, tmp_path, capsys):
  """A 64 KB tmpfs fills part-way through a 5,000-row CSV: exit 1, one line naming the fix, the
  earlier CSV at the path untouched and no temporary file left."""
  np.save(tmp_path / 'many.npy', np.tile(np.load(run['root'] / 'images.npy'), (100, 1, 1)))
  with mounted(tmp_path / 'small', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs') as small:
    out = small / 'labels.csv'
    out.write_text('id,cluster,cost\nearlier,0,1\n')
    capsys.readouterr()
    assert predict.run([f'--workdir={run["workdir"]}', f'--input={tmp_path / "many.npy"}',
                        f'--output={out}']) == 1
    assert capsys.readouterr().err == (f'error: cannot write the labels ({out}): No space left on '
                                       f'device; free space under {small}, then rerun\n')
    assert os.listdir(small) == ['labels.csv']
    assert out.read_text() == 'id,cluster,cost\nearlier,0,1\n'


def test_training_and_labelling_in_memory_data_load_no_tensorflow(run, tmp_path):
  """TensorFlow is for tfds data: a digits run and labelling a .npz and a folder do without it."""
  workdir, npz, folder = str(run['workdir']), str(run['root'] / 'images.npz'), str(run['folder'])
  script = f"""
import sys
from ohc_jax import configuration, predict
from ohc_jax.run import train
c = configuration.from_file(configuration.config_path('default'))
c.update(num_epochs=1, max_examples=512, progress_bar=False, plots_every_epochs=0)
train.train_and_evaluate(c, {str(tmp_path / 'run')!r})
for source in ({npz!r}, {folder!r}):
  assert predict.run(['--workdir=' + {workdir!r}, '--input=' + source,
                      '--output=' + {str(tmp_path / 'labels.csv')!r}]) == 0
print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')))
"""
  proc = subprocess.run([sys.executable, '-c', script], cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().splitlines()[-1] == '[]'
