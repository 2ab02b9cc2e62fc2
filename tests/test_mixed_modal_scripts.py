"""scripts/bench_mot.py and scripts/generate_mixed_modal.py from the command line, reduced."""

import csv
import os
import subprocess
import sys

import matplotlib.image
import pytest

from jaxrec.serving.mixed_modal_sampling import GRID_DPI, grid_figsize
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


@pytest.mark.slow  # ~35 s: trains a tiny run, then samples from it
def test_generate_mixed_modal_writes_the_grid(shared_data, tmp_path):
  workdir = tmp_path / 'run'
  o = '--config.dataset_options.mixed_modal'
  m = '--config.model_kwargs'
  r = _run(['scripts/train.py', '--config', 'configs/mot_mixed_modal.py', '--workdir',
            str(workdir), f'--config.data_dir={shared_data}', f'{m}.num_layers=1',
            f'{m}.embed_dim=32', f'{m}.num_heads=2', f'{m}.head_dim=16', f'{m}.mlp_dim=64',
            f'{o}.train_rows=64', f'{o}.valid_rows=32', f'{o}.text_vocab_size=256',
            f'{o}.codebook_size=16', '--config.num_epochs=1', '--config.progress=False'])
  assert r.returncode == 0, r.stderr[-3000:]
  png = tmp_path / 'samples.png'
  r = _run(['scripts/generate_mixed_modal.py', '--workdir', str(workdir), '--samples_per_class',
            '3', '--seed', '1', '--out', str(png), '--text_prompt', 'This app', '--text_tokens',
            '8'])
  assert r.returncode == 0, r.stderr[-3000:]
  assert f'wrote {png}: 10 classes x 3 samples' in r.stdout
  assert 'text: This app' in r.stdout
  width, height = grid_figsize(10, 3)
  assert matplotlib.image.imread(png).shape[:2] == (round(height * GRID_DPI),
                                                    round(width * GRID_DPI))


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
