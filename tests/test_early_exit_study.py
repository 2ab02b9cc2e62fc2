"""scripts/early_exit_study.py end to end on a tiny encoder: sweep, timed serving, outputs."""

import csv
import json
import os
import runpy

import numpy as np
import pytest

from jaxrec.layers.exit_heads import exits_at
from jaxrec.train.metrics import auc
from tests.serving.fake_run import CONFIG, make_fake_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = runpy.run_path(os.path.join(REPO, 'scripts', 'early_exit_study.py'))


def test_study_writes_sweep_timings_plot_and_summary(tmp_path):
  runs = [str(tmp_path / 'run0')]
  zs = [make_fake_run(r, s) for s, r in enumerate(runs)]
  out = str(tmp_path / 'study')
  STUDY['main'](['--runs', ','.join(runs), '--out', out, '--thresholds', '0,1,2,inf',
                 '--timed_thresholds', '1', '--rows', '16', '--batch_size', '16',
                 '--repeats', '1'])
  with open(out + '.csv', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 4  # 4 thresholds
  for z, name in zip(zs, ('r0',)):
    mine = {float(r['threshold']): r for r in rows if r['retriever'] == name}
    full = auc(z['test_label'], z['test_margins'][-1])
    for th, r in mine.items():
      layer, margin = exits_at(z['test_margins'], th, 1)
      np.testing.assert_allclose(float(r['auc']), auc(z['test_label'], margin), rtol=1e-12)
      np.testing.assert_allclose(float(r['mean_layers']), np.mean(layer + 1), rtol=1e-12)
      np.testing.assert_allclose(float(r['auc_drop']), full - float(r['auc']), atol=1e-12)
      timed = th == 1.0
      assert bool(r.get('rps')) == timed
      if timed:  # the layer-by-layer server exits exactly where the policy says
        assert float(r['served_layer_match']) == 1.0
        assert float(r['served_max_abs_diff']) < 1e-4
        assert float(r['speedup']) > 0 and float(r['cpu_speedup']) > 0
    assert float(mine[float('inf')]['mean_layers']) == CONFIG.num_layers
  with open(out + '.png', 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  text = open(out + '.md', encoding='utf-8').read()
  assert '| r0 | 1 |' in text and 'CPU speedup' in text
  summary = json.load(open(out + '_summary.json', encoding='utf-8'))
  assert [s['retriever'] for s in summary['runs']] == ['r0']


def test_labels_name_the_runs_and_must_match_them(tmp_path):
  """Two runs of the same retriever are told apart by ``--labels``; a count mismatch is named."""
  runs = [str(tmp_path / 'a'), str(tmp_path / 'b')]
  for s, r in enumerate(runs):
    make_fake_run(r, s)
  out = str(tmp_path / 'study')
  args = ['--runs', ','.join(runs), '--out', out, '--thresholds', '0,inf', '--timed_thresholds',
          'inf', '--rows', '8', '--batch_size', '8', '--repeats', '1']
  with pytest.raises(ValueError, match='--labels: 1 labels for 2 --runs'):
    STUDY['main'](args + ['--labels', 'x'])
  STUDY['main'](args + ['--labels', 'k0,k2'])
  summary = json.load(open(out + '_summary.json', encoding='utf-8'))
  assert [s['retriever'] for s in summary['runs']] == ['k0', 'k2']
