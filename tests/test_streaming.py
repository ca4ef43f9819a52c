import numpy as np
import pytest

from ohc_jax.data import array_record, pipeline, sources
from ohc_jax.errors import UsageError
from batches import assert_same_batches


def _images(n, seed=0, shape=(8, 8, 3)):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n,) + shape, dtype=np.uint8), rng.integers(0, 5, n)


@pytest.fixture(scope='module')
def image_set(tmp_path_factory):
  """A tiny tfds data set in ArrayRecord (two uneven train shards), and its arrays."""
  import tensorflow_datasets as tfds
  root = str(tmp_path_factory.mktemp('tiny') / 'tiny' / '1.0.0')
  images, labels = _images(70)
  for index, rows in enumerate((slice(0, 45), slice(45, 70))):
    array_record.write_records(array_record.shard_path(root, 'tiny', 'train', index, 2),
                               array_record.encode_examples(images[rows], labels[rows]))
  features = tfds.features.FeaturesDict({'image': tfds.features.Image(shape=(8, 8, 3)),
                                         'label': tfds.features.ClassLabel(num_classes=5)})
  array_record.write_info(root, 'tiny', '1.0.0', {'train': [45, 25]}, features)
  return root, sources.Split(images, labels)



def test_image_source_decodes_what_was_written(image_set):
  root, split = image_set
  source = sources.ImageSource(root, 'train')
  assert len(source) == 70 and source.num_classes == 5 and source.image_shape == (8, 8, 3)
  rows = np.array([69, 0, 44, 45, 3])
  batch = source.read(rows)
  np.testing.assert_array_equal(batch['image'], split.images[rows])
  np.testing.assert_array_equal(batch['label'], split.labels[rows])


@pytest.mark.parametrize('encoding', ['png', 'raw'])
def test_a_sliced_split_over_two_shards_reads_its_rows_in_any_order(tmp_path, encoding):
  """Rows of a split slice (a skip into the first shard, the rest in the second), asked out of
  order and twice: each shard's records are read in position order and given back in the rows'."""
  images, labels = _images(30, seed=8)
  root = str(tmp_path / 'tiny' / '1.0.0')
  for index, rows in enumerate((slice(0, 17), slice(17, 30))):
    array_record.write_records(array_record.shard_path(root, 'tiny', 'train', index, 2),
                               array_record.encode_examples(images[rows], labels[rows], encoding))
  array_record.write_info(root, 'tiny', '1.0.0', {'train': [17, 13]},
                          array_record.image_features((8, 8, 3), 5, encoding))
  source = sources.ImageSource(root, 'train[10:25]')
  rows = np.array([14, 0, 6, 7, 6, 13, 1])
  assert len(source) == 15
  batch = source.read(rows)
  np.testing.assert_array_equal(batch['image'], images[10:25][rows])
  np.testing.assert_array_equal(batch['label'], labels[10:25][rows])


def test_a_truncated_or_missing_shard_is_one_error_naming_the_fix(tmp_path):
  """A shard cut short (which array_record opens without an error, holding no records) fails
  when the source opens it (the first) or reads from it (the second), a missing shard when read
  from: one UsageError naming the file and saying to prepare the set again."""
  import os
  images, labels = _images(30, seed=9)
  root = str(tmp_path / 'tiny' / '1.0.0')
  paths = [array_record.shard_path(root, 'tiny', 'train', i, 2) for i in range(2)]
  for path, rows in zip(paths, (slice(0, 17), slice(17, 30))):
    array_record.write_records(path, array_record.encode_examples(images[rows], labels[rows],
                                                                  'raw'))
  array_record.write_info(root, 'tiny', '1.0.0', {'train': [17, 13]},
                          array_record.image_features((8, 8, 3), 5, 'raw'))
  whole = [open(p, 'rb').read() for p in paths]
  for cut, row in ((0, 0), (1, 20)):
    with open(paths[cut], 'wb') as f:
      f.write(whole[cut][:len(whole[cut]) // 2])
    with pytest.raises(UsageError, match=f'{os.path.basename(paths[cut])} holds 0 of its '
                                         f'{17 if cut == 0 else 13} records .truncated or '
                                         f'damaged.: prepare the data set again'):
      sources.ImageSource(root, 'train').read(np.array([row]))
    with open(paths[cut], 'wb') as f:
      f.write(whole[cut])
  os.remove(paths[1])
  source = sources.ImageSource(root, 'train')
  np.testing.assert_array_equal(source.read(np.array([3]))['image'], images[[3]])
  with pytest.raises(UsageError, match=f'{os.path.basename(paths[1])} is missing: prepare the '
                                       f'data set again'):
    source.read(np.array([20]))


def test_an_image_source_pickles_with_its_readers_left_behind(image_set):
  """Pickled after reading (its readers open), a source, alone or in a ConcatSource, reads the same
  rows; Grain's worker processes get it so."""
  import pickle
  root, split = image_set
  source = sources.ImageSource(root, 'train')
  rows = np.array([69, 0, 44, 45])
  first = source.read(rows)
  again = pickle.loads(pickle.dumps(source)).read(rows)
  assert_same_batches([again], [first])
  np.testing.assert_array_equal(again['image'], split.images[rows])
  both = pickle.loads(pickle.dumps(sources.ConcatSource(source, source))).read(rows + 70)
  assert_same_batches([both], [first])


@pytest.mark.slow  # Starts a worker process.
def test_worker_processes_stream_the_batches_of_threads(image_set):
  """A streamed source fed by Grain's mp_prefetch (workers > 0) gives the threads' batches."""
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # Grain reads its flags in the workers' parent; tests parse none.
  root, _ = image_set
  source = sources.ImageSource(root, 'train')
  batches = pipeline.TrainFeed(source, 16, 3, threads=1, prefetch=4, workers=1).epoch(1, 1)
  assert_same_batches(batches, pipeline.TrainFeed(source, 16, 3, threads=1).epoch(1, 1))


@pytest.mark.parametrize('process_count, threads', [(1, 1), (1, 3), (2, 2)])
def test_stream_feed_gives_train_feeds_batches(image_set, process_count, threads):
  root, split = image_set
  source = sources.ImageSource(root, 'train')
  for index in range(process_count):
    stream = pipeline.TrainFeed(source, 16, seed=3, process_index=index,
                                process_count=process_count, threads=threads)
    memory = pipeline.TrainFeed(split, 16, seed=3, process_index=index,
                                process_count=process_count)
    assert stream.steps_per_epoch == memory.steps_per_epoch == 4
    for epoch, start in ((0, 0), (1, 0), (1, 3)):
      assert_same_batches(stream.epoch(epoch, start), memory.epoch(epoch, start))


class _Counting(sources.ArraySource):
  """Records every row read."""

  def __init__(self, images, labels):
    super().__init__(images, labels)
    self.rows = []

  def read(self, rows):
    self.rows.extend(rows.tolist())
    return super().read(rows)


def test_resume_reads_only_the_remaining_batches():
  images, labels = _images(1000, seed=1)
  whole = list(pipeline.TrainFeed(sources.ArraySource(images, labels), 100, seed=0).epoch(2))
  source = _Counting(images, labels)
  resumed = list(pipeline.TrainFeed(source, 100, seed=0).epoch(2, start_step=7))
  assert_same_batches(resumed, whole[7:])
  assert sorted(source.rows) == sorted(pipeline.epoch_permutation(1000, 0, 2)[700:])


def test_processes_read_disjoint_rows_that_form_the_global_batch():
  images, labels = _images(1000, seed=2)
  counting = [_Counting(images, labels) for _ in range(4)]
  feeds = [pipeline.TrainFeed(s, 100, seed=5, process_index=i, process_count=4)
           for i, s in enumerate(counting)]
  whole = pipeline.TrainFeed(sources.ArraySource(images, labels), 100, seed=5).epoch(1)
  for parts in zip(whole, *(f.epoch(1) for f in feeds)):
    rows_of_all = {k: np.concatenate([p[k] for p in parts[1:]]) for k in parts[0]}
    assert_same_batches([rows_of_all], [parts[0]])
  rows = [set(s.rows) for s in counting]
  assert all(len(r) == 250 for r in rows) and len(set.union(*rows)) == 1000


def test_reads_ahead_by_at_most_prefetch_batches():
  source = _Counting(*_images(10_000, seed=3))
  batches = pipeline.TrainFeed(source, 100, seed=0, prefetch=3).epoch(0)
  for _ in range(5):
    next(batches)
  assert len(source.rows) <= (5 + 3) * 100
  batches.close()  # Stopping early leaves no thread reading.
  assert len(source.rows) <= (5 + 3) * 100


@pytest.mark.parametrize('global_batch, process_count', [(32, 1), (32, 2), (16, 4)])
def test_eval_batches_equal_memory_modes_labels_included(image_set, global_batch, process_count):
  root, split = image_set
  source = sources.ImageSource(root, 'train')
  for index in range(process_count):
    stream = list(pipeline.eval_batches(source, global_batch, index, process_count))
    memory = list(pipeline.eval_batches(split, global_batch, index, process_count))
    assert [v for _, v in stream] == [v for _, v in memory]
    local, labels = global_batch // process_count, []
    for (got, _), (want, _) in zip(stream, memory):
      label = got.pop('label')
      np.testing.assert_array_equal(label, want.pop('label'))  # Memory mode's labels too.
      assert_same_batches([got], [want])
      assert len(label) == local and not label[~want['valid']].any()  # Padding labels are 0.
      labels.append(label[want['valid']])
    want_rows = np.concatenate([np.arange(s + index * local, min(s + (index + 1) * local, 70))
                                for s in range(0, 70, global_batch)])
    got = np.concatenate(labels)
    np.testing.assert_array_equal(got, split.labels[want_rows])


def test_synthetic_image_set_is_a_readable_tfds_set(tmp_path):
  import os
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'launch'))
  import make_synthetic_images
  root = str(tmp_path / 'synthetic_images' / '1.0.0')
  make_synthetic_images.main(['--out', root, '--num', '30', '--shard_size', '13', '--seed', '4'])
  source = sources.ImageSource(root, 'train')
  assert len(source) == 30 and source.num_classes == 10
  want = [make_synthetic_images.shard(4, i, size) for i, size in enumerate((13, 13, 4))]
  batch = source.read(np.arange(30))
  np.testing.assert_array_equal(batch['image'], np.concatenate([w[0] for w in want]))
  np.testing.assert_array_equal(batch['label'], np.concatenate([w[1] for w in want]))
  assert len(set(batch['label'])) > 1 and batch['image'].std() > 10


def _write_set(root, images, labels, encoding='png', shape=None, fmt='array_record'):
  """A one-split tfds set 'tiny' at root, as ArrayRecord or TFRecord."""
  import tensorflow as tf
  records = list(array_record.encode_examples(images, labels, encoding))
  if fmt == 'array_record':
    array_record.write_records(array_record.shard_path(root, 'tiny', 'train', 0, 1), records)
  else:
    import os
    os.makedirs(root, exist_ok=True)
    with tf.io.TFRecordWriter(f'{root}/tiny-train.tfrecord-00000-of-00001') as writer:
      for record in records:
        writer.write(record)
  array_record.write_info(root, 'tiny', '1.0.0', {'train': [len(labels)]},
                          array_record.image_features(shape or images.shape[1:], 5, encoding))
  if fmt != 'array_record':
    import json
    info = json.load(open(f'{root}/dataset_info.json'))
    json.dump(dict(info, fileFormat='tfrecord'), open(f'{root}/dataset_info.json', 'w'))


@pytest.mark.parametrize('shape', [(8, 8, 3), (6, 5, 1)])
def test_raw_records_read_as_the_png_records_do(tmp_path, shape):
  images, labels = _images(20, seed=3, shape=shape)
  for encoding in ('png', 'raw'):
    _write_set(str(tmp_path / encoding), images, labels, encoding)
  rows = np.array([19, 0, 7, 7, 3])
  png, raw = (sources.ImageSource(str(tmp_path / e), 'train').read(rows) for e in ('png', 'raw'))
  assert_same_batches([raw], [png])
  np.testing.assert_array_equal(raw['image'], images[rows])


def test_to_array_record_copies_or_stores_raw_what_tfds_reads(tmp_path):
  """launch/to_array_record.py on a TFRecord set: both encodings stream the set's images, the raw
  one (as stream mode's copy in the cache) without a PNG, and tfds reads the raw copy too."""
  import os
  import sys
  import tensorflow_datasets as tfds
  from ohc_jax.data import readers
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'launch'))
  import to_array_record
  images, labels = _images(12, seed=4)
  _write_set(str(tmp_path / 'src'), images, labels, fmt='tfrecord')
  for encoding in ('png', 'raw'):
    out = str(tmp_path / encoding / 'tiny' / '1.0.0')
    to_array_record.convert(str(tmp_path / 'src'), out, encoding)
    got = sources.ImageSource(out, 'train').read(np.arange(12))
    np.testing.assert_array_equal(got['image'], images)
    np.testing.assert_array_equal(got['label'], labels)
    stored = tfds.builder_from_directory(out).info.features['image']
    assert readers.image_encoding(stored) == ('encoded' if encoding == 'png' else 'raw')
  by_tfds = tfds.builder_from_directory(str(tmp_path / 'raw' / 'tiny' / '1.0.0')).as_data_source(
      'train')
  np.testing.assert_array_equal(by_tfds[5]['image'], images[5])
  assert os.path.getsize(array_record.shard_path(out, 'tiny', 'train', 0, 1)) > images.nbytes


def test_to_array_record_raw_needs_a_fixed_size_image(tmp_path):
  """--encoding=raw on a set of varying-size images: one error line naming the fix, exit 2."""
  import os
  import subprocess
  import sys
  images, labels = _images(4, seed=4)
  _write_set(str(tmp_path / 'src'), images, labels, shape=(None, None, 3), fmt='tfrecord')
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, os.path.join(repo, 'launch', 'to_array_record.py'),
                        str(tmp_path / 'src'), str(tmp_path / 'out'), '--encoding=raw'],
                       capture_output=True, text=True, check=False)
  assert out.returncode == 2, out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'use --encoding=png' in out.stderr and 'Traceback' not in out.stderr


def test_a_record_that_does_not_decode_stays_bad_in_the_raw_copy(tmp_path):
  """Stream mode's copy of a TFRecord set stores images raw; a record whose image does not decode
  (a damaged PNG, or no Example at all) stays one that does not decode: the read names it, and
  skip_bad_records puts the next record in its place."""
  import tensorflow as tf
  from ohc_jax.data import prepare
  images, labels = _images(8, seed=6)
  records = list(array_record.encode_examples(images, labels))
  damaged = records[2].replace(b'IDAT', b'IDAX')
  assert damaged != records[2]
  records[2], records[5] = damaged, b'not an example'
  root = tmp_path / 'src'
  _write_set(str(root), images, labels, fmt='tfrecord')
  with tf.io.TFRecordWriter(str(root / 'tiny-train.tfrecord-00000-of-00001')) as writer:
    for record in records:
      writer.write(record)
  out = str(tmp_path / 'copy' / 'tiny' / '1.0.0')
  prepare.convert(str(root), out)
  for row in (2, 5):
    with pytest.raises(UsageError, match=f'record {row} does not decode'):
      sources.ImageSource(out, 'train').read(np.array([row]))
  got = sources.ImageSource(out, 'train', skip_bad=True).read(np.arange(8))
  np.testing.assert_array_equal(got['skipped'], np.isin(np.arange(8), [2, 5]))
  np.testing.assert_array_equal(got['image'], images[[0, 1, 3, 3, 4, 6, 6, 7]])


def test_the_cache_copy_is_made_once_however_the_data_dir_is_written(tmp_path, monkeypatch):
  """A TFRecord set named by a relative and by an absolute data dir streams from one copy."""
  import os
  from ohc_jax.data import prepare
  images, labels = _images(6, seed=7)
  _write_set(str(tmp_path / 'data' / 'tiny' / '1.0.0'), images, labels, fmt='tfrecord')
  monkeypatch.setenv('OHC_JAX_CACHE', str(tmp_path / 'cache'))
  monkeypatch.chdir(tmp_path)
  copies = {prepare.array_record_copy(prepare.prepared_dir('tiny', data_dir))
            for data_dir in ('data', './data/', str(tmp_path / 'data'))}
  assert len(copies) == 1 and len(os.listdir(tmp_path / 'cache' / 'array_record')) == 1
  np.testing.assert_array_equal(sources.ImageSource(copies.pop(), 'train').read(
      np.arange(6))['image'], images)


def test_stream_mode_resizes_as_memory_mode_does(tmp_path):
  """Variable-size images with image_size: ImageSource (host threads) gives the pixels of
  tfds_cache's resize in tf.data (memory mode's child), both readers.resize_crop."""
  import cv2
  import tensorflow as tf
  from ohc_jax.data import readers, tfds_cache
  rng = np.random.default_rng(5)
  sizes = [(20, 30), (9, 9), (40, 17), (12, 50)]
  originals = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in sizes]
  root = str(tmp_path / 'tiny' / '1.0.0')
  records = []
  for image, label in zip(originals, range(4)):
    records += list(array_record.encode_examples(image[None], np.array([label])))
  array_record.write_records(array_record.shard_path(root, 'tiny', 'train', 0, 1), records)
  array_record.write_info(root, 'tiny', '1.0.0', {'train': [4]},
                          array_record.image_features((None, None, 3), 5))
  with pytest.raises(UsageError, match=r'vary in size.*image_size=N'):
    sources.ImageSource(root, 'train')
  source = sources.ImageSource(root, 'train', image_size=12)
  streamed = source.read(np.arange(4))['image']
  assert source.image_shape == (12, 12, 3) and streamed.shape == (4, 12, 12, 3)
  for image, got in zip(originals, streamed):
    in_memory = tfds_cache._resize(tf.constant(image), 12).numpy()  # pylint: disable=protected-access
    np.testing.assert_array_equal(got, in_memory)
    np.testing.assert_array_equal(got, readers.resize_crop(image, 12))
  # The 9x9 image is enlarged (bilinear); the 12x50 one keeps its size and loses its sides.
  np.testing.assert_array_equal(streamed[1], cv2.resize(originals[1], (12, 12),
                                                        interpolation=cv2.INTER_LINEAR))
  np.testing.assert_array_equal(streamed[3], originals[3][:, 19:31])


def test_image_source_names_missing_keys_and_non_image_features(tmp_path):
  import tensorflow_datasets as tfds
  root = str(tmp_path / 'tiny' / '1.0.0')
  images, labels = _images(4)
  _write_set(root, images, labels)
  with pytest.raises(UsageError, match=r"no feature 'img' .*--config.image_key="):
    sources.ImageSource(root, 'train', image_key='img')
  with pytest.raises(UsageError, match=r"no feature 'y' .*--config.label_key="):
    sources.ImageSource(root, 'train', label_key='y')
  tfds.features.FeaturesDict({'image': tfds.features.Tensor(shape=(8, 8, 3), dtype=np.float32),
                              'label': tfds.features.ClassLabel(num_classes=5)}).save_config(root)
  with pytest.raises(UsageError, match=r'not an image: set --config.image_key='):
    sources.ImageSource(root, 'train')
