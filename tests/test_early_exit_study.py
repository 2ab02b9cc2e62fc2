"""scripts/early_exit_study.py end to end on a tiny encoder: sweep, timed serving, outputs."""

import csv
import dataclasses
import functools
import json
import os
import runpy

import jax
import pytest
import numpy as np
from flax import serialization

from jaxrec.layers.bert import BertConfig
from jaxrec.layers.exit_heads import exits_at
from jaxrec.models import optirag
from jaxrec.train.metrics import auc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = runpy.run_path(os.path.join(REPO, 'scripts', 'early_exit_study.py'))
CONFIG = BertConfig(vocab_size=40, hidden_size=16, num_layers=4, num_heads=2,
                    intermediate_size=32, max_position=12, dropout_rate=0.0)


_margins = jax.jit(functools.partial(optirag.full_depth_margins, CONFIG))


def _fake_run(path, seed: int, rows: int = 24, length: int = 10):
  """A run directory as scripts/train_optirag.py writes it, for a random tiny model."""
  os.makedirs(path)
  model = optirag.OptiRAGCTR(CONFIG, head_hidden=8)
  params = jax.jit(lambda key: optirag.init_params(model, key))(jax.random.PRNGKey(seed))
  params['heads']['kernel_2'] = params['heads']['kernel_2'] * 8.0  # margins of a few units
  rng = np.random.default_rng(seed)
  z = {}
  for split in ('valid', 'test'):
    ids = rng.integers(1, CONFIG.vocab_size, (rows, length)).astype(np.int32)
    mask = (np.arange(length)[None, :] < rng.integers(2, length + 1, rows)[:, None])
    ids, mask = ids * mask, mask.astype(np.int32)
    margins = np.asarray(_margins(params, ids, mask))  # [L, rows]
    z.update({f'{split}_margins': margins, f'{split}_label': (margins[-1] > 0) ^ (
        rng.random(rows) < 0.3), f'{split}_input_ids': ids, f'{split}_attention_mask': mask})
  np.savez(os.path.join(path, 'margins.npz'), **z)
  with open(os.path.join(path, 'params.msgpack'), 'wb') as f:
    f.write(serialization.msgpack_serialize(jax.device_get(params)))
  per_head = [auc(z['test_label'], m) for m in z['test_margins']]
  with open(os.path.join(path, 'results.json'), 'w') as f:
    json.dump({'retriever': f'r{seed}', 'config': {'head_hidden': 8},
               'bert_config': dataclasses.asdict(CONFIG), 'test': {'auc_per_head': per_head}}, f)
  return z


def test_study_writes_sweep_timings_plot_and_summary(tmp_path):
  runs = [str(tmp_path / 'run0')]
  zs = [_fake_run(r, s) for s, r in enumerate(runs)]
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
    _fake_run(r, s)
  out = str(tmp_path / 'study')
  args = ['--runs', ','.join(runs), '--out', out, '--thresholds', '0,inf', '--timed_thresholds',
          'inf', '--rows', '8', '--batch_size', '8', '--repeats', '1']
  with pytest.raises(ValueError, match='--labels: 1 labels for 2 --runs'):
    STUDY['main'](args + ['--labels', 'x'])
  STUDY['main'](args + ['--labels', 'k0,k2'])
  summary = json.load(open(out + '_summary.json', encoding='utf-8'))
  assert [s['retriever'] for s in summary['runs']] == ['k0', 'k2']
