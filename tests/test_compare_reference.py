"""launch/compare_reference.py: the harness's own logic, and the real reference when it is there."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ohc_jax.core import assign
from ohc_jax.configuration import CONFIG_DIR
from ohc_jax.errors import UsageError

REPO = os.path.dirname(CONFIG_DIR)
sys.path.insert(0, os.path.join(REPO, 'launch'))
import compare_reference  # noqa: E402


def _definition(costs):
  """A stand-in for the reference's routine: the definition, literally."""
  batch, num_clusters = costs.shape
  n, labels = np.zeros(num_clusters), np.full(batch, -1)
  for _ in range(batch):
    values = costs + np.log(n + 1)[None]
    values[labels >= 0] = np.inf
    i, k = divmod(int(np.argmin(values)), num_clusters)
    labels[i], n[k] = k, n[k] + 1
  return labels


def test_agreement_with_a_stand_in_reference():
  tables = compare_reference.cost_tables(3, 64, 5, seed=0)
  with jax.enable_x64(True):
    ours = lambda c: assign.combination_assign(c)[0]
    same = compare_reference.assignment_agreement(_definition, ours, tables)
    argmin = compare_reference.assignment_agreement(_definition, lambda c: c.argmin(1), tables)
  assert same['agreement'] == 1.0 and same['labels'] == 3 * 64
  assert argmin['agreement'] < 1.0
  assert same['reference_ms'] > 0 and same['ours_ms'] > 0


def test_table_layout():
  table = compare_reference.format_table(
      [{'implementation': 'reference', 'acc': 0.25, 'status': 'crashed: ValueError'},
       {'implementation': 'ohc_jax', 'acc': 0.5, 'status': 'ok'}],
      ['implementation', 'status', 'acc', 'nmi'])
  lines = table.splitlines()
  assert lines[0] == '| implementation | status | acc | nmi |'
  assert lines[2] == '| reference | crashed: ValueError | 0.2500 | n/a |'
  assert lines[3] == '| ohc_jax | ok | 0.5000 | n/a |'


def test_crash_status_names_the_error_and_where():
  def fails(message):
    raise AssertionError(message) if message is not None else AssertionError
  for message, expect in [(None, 'crashed: AssertionError ('), ('bad\nmore', 'crashed: '
                                                                'AssertionError: bad (')]:
    with pytest.raises(AssertionError) as info:
      fails(message)
    status = compare_reference.crash_status(info.value)
    assert status.startswith(expect) and 'more' not in status
    assert status.endswith(f'(test_compare_reference.py:{fails.__code__.co_firstlineno + 1})')
  assert compare_reference.crash_status(ValueError('x')) == 'crashed: ValueError: x'


@pytest.mark.skipif(not os.environ.get('OHC_REFERENCE_DIR'),
                    reason='set OHC_REFERENCE_DIR to a checkout of the PyTorch reference '
                           '(and pip install -e .[reference]) to run it')
def test_real_reference_assignment_agrees():
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  out = subprocess.run([sys.executable, 'launch/compare_reference.py', '--parts=assign',
                        '--tables=5'], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert '100.00% identical labels' in out.stdout


def test_each_data_set_gets_the_reference_name_of_its_own():
  assert [compare_reference.reference_dataset(d) for d in
          ('cifar10', 'cifar100', 'fashion_mnist', 'stl10')] == ['c10', 'c100', 'fashmnist', 'stl']
  for missing in ('mnist', 'digits', 'realdisp'):
    with pytest.raises(UsageError, match=f'--dataset={missing}: .*set --dataset= to one of'):
      compare_reference.reference_dataset(missing)


def test_a_data_set_the_reference_lacks_is_one_line_and_exit_code_2(tmp_path):
  out = subprocess.run([sys.executable, 'launch/compare_reference.py', '--dataset=mnist',
                        f'--reference_dir={tmp_path}'], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      'error: --dataset=mnist: the harness runs the reference on cifar10 (its c10), cifar100 (its '
      'c100), fashion_mnist (its fashmnist), stl10 (its stl) only: set --dataset= to one of those']
