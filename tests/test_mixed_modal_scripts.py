"""scripts/bench_mot.py and scripts/generate_mixed_modal.py from the command line, reduced."""

import csv
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def _run(args):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  return subprocess.run([sys.executable] + args, cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=600)


@pytest.mark.slow  # ~50 s on 2 cores: 9 compiles of the xs train step
def test_bench_mot_writes_both_models_and_the_flop_ratio(tmp_path):
  out = tmp_path / 'docs' / 'mot_bench'
  args = ['--sizes', 'xs', '--batch_size', '2', '--steps', '1', '--warmup', '1', '--out',
          str(out)]
  r = _run(['scripts/bench_mot.py', *args])
  assert r.returncode == 0, r.stderr[-3000:]
  with open(f'{out}.csv', newline='') as f:
    rows = {row['variant']: row for row in csv.DictReader(f)}
  assert set(rows) == {'dense', 'mot', 'mot_every_modality'}
  dense, mot, every = rows['dense'], rows['mot'], rows['mot_every_modality']
  assert all(row['size'] == 'xs' and row['batch'] == '2' for row in rows.values())
  assert int(mot['params']) > int(dense['params'])  # untied copies of the non-embedding weights
  # Grouped routing: MoT's compiled FLOPs are the dense model's (within the 1.1x).
  assert float(mot['fwd_flops_ratio']) <= 1.1 and float(mot['train_flops_ratio']) <= 1.1
  # Every modality's weights on every token costs more than that.
  assert float(every['train_flops_ratio']) > 1.1 and every['goal'] == 'FAIL'
  assert float(dense['fwd_flops']) >= float(dense['analytic_fwd_flops']) > 0
  assert float(dense['train_flops']) > 2 * float(dense['fwd_flops'])
  assert float(mot['step_ms']) > 0 and mot['goal'] in ('PASS', 'FAIL')
  md = (tmp_path / 'docs' / 'mot_bench.md').read_text()
  assert '```' not in md  # the command is inline, never a doc command block (tests/test_docs.py)
  assert f'Command: `python scripts/bench_mot.py {" ".join(args)}`' in md
  assert 'Machine:' in md and 'load average' in md and 'scan_layers=False' in md
  assert '| xs | mot |' in md and '| xs | mot_every_modality |' in md


def test_bench_mot_rejects_an_unknown_size():
  r = _run(['scripts/bench_mot.py', '--sizes', 'xs,xxl'])
  assert r.returncode != 0 and 'xxl' in r.stderr and "'xs', 's', 'm', 'l'" in r.stderr


# The script end to end (a tiny run, then its grid and text) runs in the doc check of docs/mot.md;
# the grid's layout and size are tested in tests/serving/test_mixed_modal_sampling.py.


def test_generate_mixed_modal_names_a_missing_run(tmp_path):
  r = _run(['scripts/generate_mixed_modal.py', '--workdir', str(tmp_path / 'nope'), '--out',
            str(tmp_path / 'x.png')])
  assert r.returncode == 1 and 'error:' in r.stderr and 'nope' in r.stderr
  assert 'Traceback' not in r.stderr  # a user error: one line
  assert not (tmp_path / 'x.png').exists()


@pytest.fixture(autouse=True)
def _no_stray_docs():
  """The tests write under tmp_path only, never the committed docs."""
  before = set(os.listdir(REPO_ROOT / 'docs'))
  yield
  assert set(os.listdir(REPO_ROOT / 'docs')) == before
