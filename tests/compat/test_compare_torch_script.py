"""Helpers of scripts/compare_torch.py and a tiny ``--baseline plain`` run (needs torch; TorchRec
is not needed, and the plain run proves it by blocking its import; the timings are not tested)."""

import argparse
import os
import pathlib
import re
import runpy
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip('torch')

from tests.models.tiny import MIXED, SPARSE, make_batch  # pylint: disable=g-import-not-at-top
from jaxrec.data.dataset import ArrayDataset  # pylint: disable=g-import-not-at-top

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / 'scripts' / 'compare_torch.py'


@pytest.fixture(scope='module')
def script():
  return runpy.run_path(str(SCRIPT), run_name='compare_torch')


def test_with_constant_dense(script):
  batch = make_batch(SPARSE, rows=5)
  data = ArrayDataset(SPARSE, sparse=batch['sparse'], label=batch['label'], name='tiny')
  out = script['with_constant_dense'](data)
  assert out.schema.dense == ('const',) and out.schema.sparse == SPARSE.sparse
  np.testing.assert_array_equal(out.dense, np.ones((5, 1), np.float32))
  np.testing.assert_array_equal(out.sparse, data.sparse)
  np.testing.assert_array_equal(out.label, data.label)
  mixed = make_batch(MIXED, rows=3)
  with_dense = ArrayDataset(MIXED, **{k: v for k, v in mixed.items() if k != 'weight'},
                            name='mixed')
  with pytest.raises(ValueError, match='mixed: already has dense features'):
    script['with_constant_dense'](with_dense)


def test_write_between_markers(script, tmp_path):
  begin, end, write = script['BEGIN'], script['END'], script['write_between_markers']
  path = tmp_path / 'doc.md'
  path.write_text(f'# Title\n\nintro\n{begin}\nold table\n{end}\nnotes\n')
  write(str(path), 'new table\n')
  assert path.read_text() == f'# Title\n\nintro\n{begin}\nnew table\n{end}\nnotes\n'
  fresh = tmp_path / 'fresh.md'
  write(str(fresh), 'table\n')
  assert fresh.read_text() == f'{begin}\ntable\n{end}\n'
  plain = tmp_path / 'plain.md'
  plain.write_text('hand-written\n')
  with pytest.raises(ValueError, match='without the markers'):
    write(str(plain), 'table\n')
  assert plain.read_text() == 'hand-written\n'


def test_parse_epochs(script):
  assert script['_parse_epochs']('criteo_like=1,frappe=2') == {'criteo_like': 1, 'frappe': 2}
  with pytest.raises(ValueError, match="'frappe'"):
    script['_parse_epochs']('frappe')


# Runs the script with torchrec and fbgemm_gpu unimportable (a None entry in sys.modules makes
# `import torchrec` raise ImportError), as on a machine where only torch is installed.
_WITHOUT_TORCHREC = """
import runpy, sys
sys.modules['torchrec'] = None
sys.modules['fbgemm_gpu'] = None
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def test_plain_baseline_runs_without_torchrec(tmp_path):
  out = tmp_path / 'out.md'
  args = ['--baseline', 'plain', '--models', 'dlrm', '--datasets', 'criteo_like',
          '--batch_sizes', '256', '--compile_batch_sizes', '', '--warmup', '1', '--steps', '1',
          '--epochs', 'criteo_like=1', '--max_vocab', '100', '--criteo_train_rows', '1024',
          '--criteo_valid_rows', '512', '--embedding_dim', '4', '--profile_batch_size', '0',
          '--torch_threads', '1', '--out', str(out)]
  env = dict(os.environ, PYTHONPATH=str(SCRIPT.parents[1]), XLA_FLAGS='')
  proc = subprocess.run([sys.executable, '-c', _WITHOUT_TORCHREC, str(SCRIPT), *args],
                        capture_output=True, text=True, env=env, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = out.read_text()
  assert '| jaxrec jit | PyTorch eager 1t | jaxrec / fastest PyTorch |' in text
  assert '| jaxrec AUC | PyTorch AUC | jaxrec logloss | PyTorch logloss |' in text
  assert 'TorchRec' not in text and 'torchrec ' not in text
  assert re.search(r'Versions: jax \S+ \(cpu\), torch \S+  \n', text), text
  assert re.search(r'Machine: .*, no GPU  \n', text), text
  # One epoch (one Adam step of 1024 rows) from the same weights: the same validation scores.
  row = next(l for l in text.splitlines() if l.startswith('| criteo_like | dlrm | 1 |'))
  j_auc, t_auc, j_loss, t_loss = (float(c) for c in row.strip('|').split('|')[3:7])
  assert abs(j_auc - t_auc) <= 2e-5 and abs(j_loss - t_loss) <= 2e-5, row


def test_plain_trainers_and_profile(script):
  """The plain baseline's trainer variants (names, same weights) and its profile phases."""
  args = argparse.Namespace(baseline='plain', torch_device='cpu')
  trainers = script['torch_trainers']('dlrm_dcn', MIXED, 4, args, [1, 2], True)
  assert list(trainers) == ['PyTorch eager 1t', 'PyTorch eager 2t', 'PyTorch compile 1t']
  states = [t.model.state_dict() for t in trainers.values()]
  for name, value in states[0].items():
    for other in states[1:]:
      np.testing.assert_array_equal(value.numpy(), other[name].numpy(), err_msg=name)
  jax_model, params, torch_model = script['build_pair']('dlrm', MIXED, 4, 0, 'plain')
  trainer = script['PlainTorchTrainer'](torch_model, MIXED, False, 1)
  times = script['profile_pair'](jax_model, params, trainer, 'PyTorch eager 1t', MIXED,
                                 make_batch(MIXED, rows=32), 0, 1)
  assert set(times['PyTorch eager 1t']) == {'forward', 'forward+backward', 'embedding fwd+bwd',
                                            'optimizer'}
  assert len(times['jaxrec']) == 6
  assert all(t > 0 for fw in times.values() for t in fw.values())
  table = script['profile_table']([{'dataset': 'd', 'model': 'dlrm', 'batch_size': 32,
                                    'times': times}])
  assert '| d | dlrm | 32 | PyTorch eager 1t |' in table
