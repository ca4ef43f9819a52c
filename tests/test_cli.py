"""The command line as a user runs it: bad input gives one line naming the fix and exit code 2."""

import os
import subprocess
import sys

import pytest
from absl import flags

from ohc_jax import cli, configuration, main, predict, report
from ohc_jax.run import resume
from ohc_jax.configuration import CONFIG_DIR
from ohc_jax.errors import Interrupted, NonFiniteError, UsageError

REPO = os.path.dirname(CONFIG_DIR)


def run_main(*args, env=None):
  env = dict(os.environ, **(env or {}))
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', 'ohc_jax.main', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def assert_usage_error(proc, *fragments):
  assert proc.returncode == 2, proc.stderr
  assert 'Traceback' not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ')
  for fragment in fragments:
    assert fragment in last


# Invalid values of every config field, as --config.FIELD=VALUE (a new field needs a row here).
INVALID = {
    'dataset': ['imagenet9', 'vectors', 'tfds:'],
    'data_dir': [''],
    'download': ['maybe'],
    'manual_dir': [''],
    'protocol': ['train'],
    'image_key': [''],
    'label_key': [' '],
    'train_split': [''],
    'eval_split': [''],
    'image_size': ['-1', '32'],  # 32: the default config's digits are not a tfds data set.
    'max_examples': ['-5', '1.5'],
    'imbalance': ['4', '-1'],
    'prior_matching': ['greedy'],
    'prior_scope': ['none'],
    'ckm_pretrain_frac': ['-0.1', '1.5', 'nan', 'abc'],
    'encoder': ['vgg', 'conv1d'],
    'compute_dtype': ['float16', 'bf16'],
    'conv_impl': ['winograd'],
    'hidden_dim': ['0', '1000000000'],
    'latent_dim': ['0', '1000000000'],
    'num_clusters': ['1', '100000000'],
    'sigma': ['0', '-1', 'inf', 'nan', 'abc', '3e38', '1e-38'],
    'method': ['kmeans'],
    'assign_impl': ['fast'],
    'keep_counts': ['maybe'],
    'log_normaliser': ['maybe'],
    'soft_train': ['maybe'],
    'warm_start': ['maybe'],
    'constrained_eval': ['maybe'],
    'covariance': ['full'],
    'probe_every': ['-1'],
    'batch_size': ['0'],
    'eval_batch_size': ['0', '10000000000'],
    'learning_rate': ['0', '-0.1', 'inf', 'nan', 'abc'],
    'num_epochs': ['0'],
    'seed': ['-1', str(2**32)],
    'num_devices': ['-1'],
    'assignment_scope': ['host'],
    'distributed': ['maybe'],
    'coordinator_address': ['localhost'],
    'num_processes': ['0', 'two'],
    'process_id': ['-1'],
    'log_every_steps': ['0'],
    'progress_bar': ['maybe'],
    'checkpoint_every_steps': ['-1'],
    'keep_checkpoints': ['0'],
    'plots_every_epochs': ['-1'],
    'profile_steps': ['-1', 'x'],
    'eval_sample': ['-1'],
    'eval_every_steps': ['-1'],
    'input_mode': ['disk'],
    'max_host_memory_gb': ['0', 'nan'],
    'skip_bad_records': ['maybe'],
    'input_threads': ['-1'],
    'input_priority': ['low'],
}


def parse(*args):
  """The config main builds from its arguments, in-process (a UsageError for bad input)."""
  flag_values = flags.FlagValues()
  main.parse_flags(['main', *args], flag_values)
  configuration.validate(flag_values.config)
  return flag_values.config


def test_every_config_field_has_invalid_values():
  assert set(INVALID) == set(configuration.base_config().keys())


@pytest.mark.parametrize('field,value', [(f, v) for f, values in INVALID.items() for v in values])
def test_invalid_config_values_name_the_field(field, value):
  with pytest.raises(UsageError, match=f'--config.{field}='):
    parse(f'--config.{field}={value}')


def test_config_names_and_paths():
  assert parse().dataset == 'digits'
  for name in ('cifar10', 'cifar10.py', 'configs/cifar10.py', f'{CONFIG_DIR}/cifar10.py'):
    config = parse(f'--config={name}', '--config.max_examples=7')
    assert (config.dataset, config.max_examples) == ('cifar10', 7)
  with pytest.raises(UsageError, match='did you mean cifar10.*') as error:
    parse('--config=cifar1')
  assert 'mnist' in str(error.value)  # The names there are.
  with pytest.raises(UsageError, match="unknown config field 'lerning_rate'.*learning_rate"):
    parse('--config=cifar10', '--config.lerning_rate=0.1')


@pytest.mark.slow
@pytest.mark.parametrize('args,fragment', [
    (['--config.foo=1'], "unknown config field 'foo'"),
    (['--config.learning_rate=abc'], '--config.learning_rate=abc'),
    (['--config.seed=-1'], 'seed must be >= 0'),
    (['--config=nope.py'], "no config file 'nope.py'"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, fragment):
  proc = run_main(f'--workdir={tmp_path / "run"}', *args)
  assert_usage_error(proc, fragment)
  assert len(proc.stderr.strip().splitlines()) == 1 and not proc.stdout
  assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_workdir_that_cannot_be_written(tmp_path):
  assert_usage_error(run_main('--workdir=/proc/ohc_jax_run'), 'cannot write in /proc')
  (tmp_path / 'file').write_text('')
  with pytest.raises(UsageError, match='is a file'):
    resume.decide(parse(), str(tmp_path / 'file' / 'run'), False)


@pytest.mark.slow
def test_tfds_data_set_not_prepared(tmp_path):
  proc = run_main(f'--workdir={tmp_path / "run"}', '--config=mnist',
                  f'--config.data_dir={tmp_path / "empty"}')
  assert_usage_error(proc, 'not prepared', '--config.data_dir', '--config.download=True')


@pytest.mark.slow
def test_finished_workdir_is_kept(tmp_path):
  (tmp_path / 'results.json').write_text('{"kept": true}')
  proc = run_main(f'--workdir={tmp_path}')
  assert_usage_error(proc, '--overwrite')
  assert (tmp_path / 'results.json').read_text() == '{"kept": true}'


@pytest.mark.parametrize('error,code', [
    (UsageError('bad x: give y'), 2), (NonFiniteError('non-finite loss at step 3'), 1),
    (Interrupted(15, 7, '/w'), 143), (Interrupted(2, 7, '/w'), 130)])
def test_the_wrapper_turns_errors_into_one_line_and_an_exit_code(error, code, capsys):
  def tool(flag_values, args):
    raise error
  assert cli.run(tool, cli.parse_flags, ['ohc_jax.tool']) == code
  err = capsys.readouterr().err.strip()
  assert err == (f'error: {error}' if code < 128 else str(error))
  assert '\n' not in err


def test_flag_errors_of_every_tool_are_one_line(capsys):
  for run, args, fragments in (
      (predict.run, ['--workdir=w'], ('--input', '--output', 'ohc_jax.predict --helpfull')),
      (predict.run, ['--workdir=w', '--input=i', '--output=o', '--batch_size=abc'],
       ('--batch_size=abc',)),
      (report.run, ['--nope'], ("'nope'", 'ohc_jax.report --helpfull')),
      (report.run, [], ('give one workdir',)),
      (report.run, ['--workdir=a', 'b'], ('not a and b',)),
      (lambda argv: cli.run(main.train, main.parse_flags, ['main.py', *argv]), [],
       ('--workdir is required',)),
      (lambda argv: cli.run(main.train, main.parse_flags, ['main.py', *argv]),
       ['--workdir=w', 'extra'], ('unexpected arguments extra',))):
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '\n' not in err, err
    for fragment in fragments:
      assert fragment in err, (fragment, err)


def test_report_takes_the_workdir_as_argument_or_flag(tmp_path, capsys):
  for args in ([str(tmp_path / 'missing')], [f'--workdir={tmp_path / "missing"}']):
    assert report.run(args) == 2
    assert capsys.readouterr().err.strip() == (
        f'error: {tmp_path / "missing"} does not exist: name the workdir of a training run')
