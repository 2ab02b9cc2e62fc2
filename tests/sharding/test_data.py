"""Process-local batches (each process reads its block of every global batch) and the
distributed start-up arguments."""

import numpy as np
import pytest

from jaxrec.data.dataset import ArrayDataset
from jaxrec.data.synthetic import SyntheticConfig, make_splits
from jaxrec.train import host_data as data_lib
from jaxrec.sharding import distributed
from tests.sharding import common


def _dataset(rows=45):
  b = common.make_batches(1, rows)[0]
  return ArrayDataset(common.SCHEMA, b['sparse'], b['label'], b['dense'])


@pytest.mark.parametrize('source', [_dataset(), make_splits(SyntheticConfig(num_sparse=3),
                                                            45, 1, 1)['train']],
                         ids=['array', 'streaming'])
@pytest.mark.parametrize('shuffle', [False, True])
def test_process_blocks_tile_the_global_batches(source, shuffle):
  kw = dict(shuffle=shuffle, seed=3, epoch=2, start=1)
  glob = list(source.batches(16, **kw))
  parts = [list(data_lib.ProcessLocalSource(source, p, 4).batches(16, **kw)) for p in range(4)]
  assert all(len(p) == len(glob) == 2 for p in parts)
  for b, want in enumerate(glob):
    for key, value in want.items():
      np.testing.assert_array_equal(np.concatenate([parts[p][b][key] for p in range(4)]), value)
  with pytest.raises(ValueError, match='batch size 18 does not split over 4 processes'):
    next(data_lib.ProcessLocalSource(source, 0, 4).batches(18))


def test_pad_rows():
  b = common.make_batches(1, 5)[0]
  padded, n = data_lib.pad_rows(b, 4)
  assert n == 5 and len(padded['label']) == 8 and padded['weight'][5:].sum() == 0


def test_distributed_initialize_arguments(monkeypatch):
  for var in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
              distributed.ENV_PROCESS_ID):
    monkeypatch.delenv(var, raising=False)
  assert distributed.initialize() is False  # nothing describes a multi-process run
  assert distributed.initialize('127.0.0.1:1', 1, 0) is False  # one process: nothing to do
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, '2')
  with pytest.raises(ValueError, match='needs the coordinator address, the process count'):
    distributed.initialize()
  monkeypatch.setenv(distributed.ENV_PROCESS_ID, 'one')
  with pytest.raises(ValueError, match="JAX_PROCESS_ID='one' is not an integer"):
    distributed.initialize()
