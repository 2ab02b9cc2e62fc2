"""scripts/bench_early_exit.py end to end on a tiny encoder: timing table, bundle export, checks."""

import csv
import os
import runpy

import numpy as np
import pytest

from tests.serving.fake_run import make_fake_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = runpy.run_path(os.path.join(REPO, 'scripts', 'bench_early_exit.py'))


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('bench') / 'run')
  make_fake_run(path, seed=0, rows=16)
  return path


def test_bench_a_run_then_its_bundle(run, tmp_path, capsys):
  out = str(tmp_path / 'bench')
  # one batch size and bucket: fewest compilations (tests/serving covers the servers' buckets)
  args = ['--batch_sizes', '8', '--thresholds', '0,inf', '--rows', '16', '--repeats', '1']
  BENCH['main'](['--run', run, '--out', out] + args)
  with open(out + '.csv', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  assert [(float(r['threshold']), int(r['batch'])) for r in rows] == [(0, 8), (float('inf'), 8)]
  for r in rows:
    assert int(r['rows']) == 16 and float(r['max_margin_diff']) < 1e-5
    assert all(float(r[k]) > 0 for k in ('rps_full_depth', 'rps_host_loop', 'rps_device'))
    assert r['platform'] == 'cpu' and r['command'].startswith(
        'python scripts/bench_early_exit.py --run ')
  assert float(rows[1]['mean_layers']) == 4.0 and float(rows[0]['mean_layers']) < 4.0
  text = open(out + '.md', encoding='utf-8').read()
  assert '| 0 | 8 |' in text and 'Machine: cpu (cpu)' in text and 'load average' in text

  bundle = str(tmp_path / 'model.npz')
  BENCH['main'](['--run', run, '--rows', '16', '--export_bundle', bundle])
  assert 'full-depth margins identical to the unpruned model' in capsys.readouterr().out
  out_b = str(tmp_path / 'bench_bundle')
  BENCH['main'](['--bundle', bundle, '--out', out_b] + args)
  with open(out_b + '.csv', encoding='utf-8') as f:
    from_bundle = list(csv.DictReader(f))
  assert [r['mean_layers'] for r in from_bundle] == [r['mean_layers'] for r in rows]


def test_bench_names_bad_arguments_and_disagreeing_servers(run):
  with pytest.raises(SystemExit, match='--rows 17, but .* holds 16 prompts'):
    BENCH['main'](['--run', run, '--rows', '17'])
  with pytest.raises(SystemExit, match='--rows 4 is less than one batch of 8'):
    BENCH['main'](['--run', run, '--rows', '4', '--batch_sizes', '8', '--repeats', '1'])
  served = lambda layers, margins: [(np.array(margins, np.float32), np.array(layers), None)]
  assert BENCH['compare'](served([1, 3], [0.5, 2.0]), served([1, 3], [0.5, 2.0]), 1e-4, 'x') == 0
  with pytest.raises(SystemExit, match=r'x: the servers disagree on 1 of 2 rows, e.g. rows \[1\]'):
    BENCH['compare'](served([1, 3], [0.5, 2.0]), served([1, 2], [0.5, 2.0]), 1e-4, 'x')
  with pytest.raises(SystemExit, match='disagree on 1 of 2 rows'):
    BENCH['compare'](served([1, 3], [0.5, 2.0]), served([1, 3], [0.5, 2.1]), 1e-4, 'x')
