"""Embedding plans: JSON round trip, readable report, validation errors naming the table."""

import pytest

from jaxrec.embeddings import EmbeddingBagConfig
from jaxrec.sharding.embedding_plan import EmbeddingPlan, TableSharding
from tests.embeddings.common import ALL_TYPES_PLAN, ALL_TYPES_TABLES

T = (EmbeddingBagConfig('big', 1000, 8, ('x',)), EmbeddingBagConfig('small', 10, 6, ('y',)))


def test_json_round_trip_and_shards():
  plan = EmbeddingPlan.from_json(ALL_TYPES_PLAN.to_json())
  assert plan == EmbeddingPlan(dict(ALL_TYPES_PLAN.tables), 2, 4)
  shards = plan.shards(ALL_TYPES_TABLES)
  by = lambda name: [s for s in shards if s.table == name]
  assert len(by('dp')) == 8 and len(by('tw')) == 1 and by('tw')[0].device == 5
  assert [(s.row_lo, s.row_hi) for s in by('rw')] == [(0, 7), (7, 14), (14, 21), (21, 28),
                                                      (28, 35), (35, 42), (42, 49), (49, 50)]
  assert [(s.col_lo, s.col_hi, s.device) for s in by('cw')] == [(0, 4, 2), (4, 8, 7)]
  assert {s.device for s in by('twrw')} == {4, 5, 6, 7}
  grid = by('grid')
  assert {(s.col_lo, s.device) for s in grid} == {(0, d) for d in (4, 5, 6, 7)} | {
      (4, d) for d in (0, 1, 2, 3)}


def test_describe_lists_each_device():
  text = ALL_TYPES_PLAN.describe(ALL_TYPES_TABLES, batch_size=64, bag_sizes={'f_tw0': 3.0})
  assert 'device 5 (host 1)' in text
  assert 'tw[0:37, 0:8] (table_wise)' in text
  assert text.count('device ') == 8
  assert 'rw_small[5:5, 0:8] (row_wise)' in text
  dev5 = text.split('device 5')[1].split('device 6')[0]
  # device 5: dp 23 x 8, tw 37 x 8, rw [35:42] x 8, twrw [8:16] x 4, grid [11:22] x 4; lookups
  # 64 (dp) + 64 * 4 (tw) + 64 * 7/50 + 64 * 8/29 + 128 * 11/41 = 381.
  # rw_small (5 rows) leaves device 5 an empty shard.
  assert dev5.splitlines()[0] == (' (host 1): 6 shards, 86 rows, 2448 bytes, ~381 lookups/step')


@pytest.mark.parametrize('spec,msg', [
    (TableSharding('column_wise', devices=(0, 1, 2, 3)), r"table 'small' \(10 x 6\), column_wise: "
     r"embedding_dim 6 does not split into 4"),
    (TableSharding('grid', hosts=(0, 1, 0, 1)), r"table 'small' \(10 x 6\), grid: "
     r"embedding_dim 6 does not split into 4"),
    (TableSharding('table_wise', devices=(16,)), r"table 'small'.*device 16 is not in \[0, 16\)"),
    (TableSharding('table_column_wise', devices=(7, 8)), r"table 'small'.*span hosts"),
    (TableSharding('table_row_wise'), r"table 'small'.*takes hosts"),
    (TableSharding('sideways'), r"table 'small': unknown sharding type 'sideways'"),
])
def test_type_the_shape_does_not_allow(spec, msg):
  plan = EmbeddingPlan({'big': TableSharding('row_wise'), 'small': spec}, 2, 8)
  with pytest.raises(ValueError, match=msg):
    plan.validate(T)


def test_memory_errors_name_the_table_or_device():
  cap = 8 * 4 * 100  # 100 rows of 8 floats
  fits_nowhere = EmbeddingPlan({'big': TableSharding('table_wise', devices=(0,)),
                                'small': TableSharding('data_parallel')}, 1, 4, cap)
  with pytest.raises(ValueError, match=r"table 'big' fits on no device: its table_wise shard "
                                       r"needs 32000 bytes, the cap is 3200"):
    fits_nowhere.validate(T)
  over = EmbeddingPlan({'big': TableSharding('row_wise'),
                        'small': TableSharding('table_wise', devices=(2,))}, 1, 10, cap)
  with pytest.raises(ValueError, match=r"device 2 is over its memory cap: 3440 bytes > 3200 "
                                       r"\(tables \['big', 'small'\]\)"):
    over.validate(T)
  EmbeddingPlan({'big': TableSharding('row_wise'),
                 'small': TableSharding('table_wise', devices=(2,))}, 1, 10, 3440).validate(T)


def test_missing_and_unknown_tables():
  with pytest.raises(ValueError, match="table 'small' has no entry in the embedding plan"):
    EmbeddingPlan({'big': TableSharding('row_wise')}, 1, 2).validate(T)
  with pytest.raises(ValueError, match=r"names tables that do not exist: \['nope'\]"):
    EmbeddingPlan({'big': TableSharding('row_wise'), 'small': TableSharding('row_wise'),
                   'nope': TableSharding('row_wise')}, 1, 2).validate(T)
  with pytest.raises(ValueError, match="table 'x': expected keys type"):
    EmbeddingPlan.from_dict({'tables': {'x': {'devices': [0]}}})
