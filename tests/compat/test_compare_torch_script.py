"""Helpers of scripts/compare_torch.py (needs jaxrec[torch]; the timed runs are not tested)."""

import pathlib
import runpy

import numpy as np
import pytest

pytest.importorskip('torchrec')

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
