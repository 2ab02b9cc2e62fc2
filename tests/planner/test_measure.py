"""Ground truth: what each device reads, the all-to-all bytes, a (tiny) timed step."""

import numpy as np
import pytest

from jaxrec.planner import measure
from jaxrec.planner.tasks import sample_ids
from jaxrec.sharding.embedding_comms import torchrec_bytes
from jaxrec.sharding.embedding_plan import EmbeddingPlan, TableSharding
from tests.planner.common import table

TABLES = [table('a', 30, 8, 3.0), table('b', 17, 4, 2.0, 1.0), table('c', 40, 8, 1.5),
          table('d', 9, 4, 4.0), table('e', 25, 8, 2.5), table('f', 12, 4, 1.0)]
PLAN = EmbeddingPlan({'a': TableSharding('table_wise', devices=(1,)),
                      'b': TableSharding('row_wise'),
                      'c': TableSharding('column_wise', devices=(0, 0, 3, 2)),
                      'd': TableSharding('data_parallel'),
                      'e': TableSharding('table_row_wise', hosts=(1,)),
                      'f': TableSharding('grid', hosts=(0, 1))}, num_hosts=2, devices_per_host=2)
B = 16


def test_device_bytes_add_up_to_torchrec_estimate():
  configs = [t.config() for t in TABLES]
  bags = {t.name: t.pooling for t in TABLES}
  ids, out = measure.device_comm_bytes(PLAN, configs, B, bags)
  want_ids, want_out = torchrec_bytes(PLAN, configs, B, bags)
  assert ids.sum() == pytest.approx(want_ids) and out.sum() == pytest.approx(want_out)
  # Table-wise 'a' on device 1: B x 8 floats out; column shards of 'c' (width 2) on 0, 0, 3, 2.
  dims = measure.device_comm_dims(PLAN, TABLES, B)
  b_rw = 4  # row_wise 'b': its dim on every device
  dp = 9 * 4 / 4 / B  # data_parallel 'd': R d / N / B floats per sample
  twrw = 8 * (1 + 2 / 4)  # table_row_wise 'e' on host 1: d (1 + W_l / W)
  grid = 2 * (1 + 2 / 4)  # grid 'f': a column half per host
  np.testing.assert_allclose(dims, [b_rw + 4 + dp + grid, 8 + b_rw + dp + grid,
                                    b_rw + 2 + dp + twrw + grid, b_rw + 2 + dp + twrw + grid])
  ms = measure.comm_ms(PLAN, TABLES, B)
  np.testing.assert_allclose(ms, 2 * B * dims * 4 / measure.comm_bandwidth(PLAN))


def test_device_work_splits_the_ids():
  work = measure.device_work(PLAN, TABLES, B, seed=1)
  shards = {(w.features.name, d, w.width, w.rows): w for d, ws in enumerate(work) for w in ws}
  # Row-wise 'b' (17 rows, blocks of 5): each id read once, in its block.
  blocks = [shards[('b', d, 4, r)] for d, r in enumerate((5, 5, 5, 2))]
  ids, _ = sample_ids(TABLES[1], B, np.random.default_rng([1, 1]))
  assert sum(w.ids.size for w in blocks) == ids.size
  assert all(w.ids.max() < w.rows for w in blocks if w.ids.size)
  # Data parallel 'd': each device pools its B / 4 samples, all rows.
  dp = [w for ws in work for w in ws if w.features.name == 'd']
  assert [w.batch for w in dp] == [4] * 4 and all(w.rows == 9 for w in dp)
  assert sum(w.ids.size for w in dp) == sample_ids(TABLES[3], B,
                                                   np.random.default_rng([1, 3]))[0].size
  assert dp[0].features.pooling == pytest.approx(4.0 / 4)
  # Column shards of 'c' read every id of the table.
  c = [w for ws in work for w in ws if w.features.name == 'c']
  assert len(c) == 4 and len({w.ids.size for w in c}) == 1 and c[0].width == 2
  shards_f = measure.device_shards(PLAN, TABLES)
  assert sum(len(s) for s in shards_f) == sum(len(ws) for ws in work)


def test_a_plan_is_timed_per_device():
  small = EmbeddingPlan({'a': TableSharding('table_wise', devices=(1,)),
                         'b': TableSharding('row_wise'), 'd': TableSharding('data_parallel')},
                        num_hosts=1, devices_per_host=2)
  tables = [TABLES[0], TABLES[1], TABLES[3]]
  m = measure.measure_plan(small, tables, B, warmup=1, runs=3)
  assert len(m.compute) == 2 and all(t.runs == 3 for t in m.compute)
  assert all(t.min_ms <= t.p25_ms <= t.median_ms <= t.p75_ms <= t.max_ms for t in m.compute)
  assert m.max_ms == pytest.approx(max(m.total_ms)) and m.max_ms > 0
  assert measure.measure_device([]).runs == 0
