"""The TorchRec planner port: estimators against hand calculations, shards, plans."""

import pytest

from jaxrec.planner import torchrec_port as trp
from tests.planner.common import table, tables

T = table('t', 1000, 16, pooling=2.5)
TOPO = trp.Topology(world_size=4, local_world_size=4, hbm_cap=10 ** 9, batch_size=16)  # B = 64


def _storage(kind, topo=TOPO, optimizer='rowwise_adagrad', t=T):
  opt = trp.Option(t, kind, trp.shard_sizes(kind, t.rows, t.dim, topo.world_size,
                                            topo.local_world_size))
  return [trp.shard_storage(opt, s, topo, optimizer) for s in opt.shards]


def test_storage_equals_hand_calculation():
  # table_wise: tensor 1000 x 16 x 4 = 64000; row-wise Adagrad state 64000 / 16 = 4000;
  # ids 2.5 x 16 x 4 ranks x 8 bytes = 1280; outputs 16 x 4 ranks x 16 x 4 bytes = 4096.
  assert _storage('table_wise') == [64000 + 4000 + 1280 + 4096]
  assert _storage('column_wise') == [73376]  # dim 16 < 128: one column block
  # row_wise: 250 rows per rank: 16000 + 1000; ids (40 / 4) x 4 x 8 = 320; outputs 4096.
  assert _storage('row_wise') == [16000 + 1000 + 320 + 4096] * 4
  # data_parallel: the whole table per rank; ids 40 x 8 = 320; outputs 16 x 16 x 4 = 1024.
  assert _storage('data_parallel') == [64000 + 4000 + 320 + 1024] * 4
  # table_row_wise on 2 hosts x 2: 500 rows per rank; ids (40 / 2) x 4 x 8 = 640.
  two = trp.Topology(4, 2, 10 ** 9, 16)
  assert _storage('table_row_wise', two) == [32000 + 2000 + 640 + 4096] * 2
  # Adam keeps two slots, SGD none.
  assert _storage('table_wise', optimizer='adam') == [64000 + 128000 + 1280 + 4096]
  assert _storage('table_wise', optimizer='sgd') == [64000 + 1280 + 4096]


def test_perf_equals_hand_calculation():
  p = trp.shard_perf('table_wise', 1000, 16, 2.5, TOPO)
  # ids read 1280 + rows read 40 x 4 x max(16, 32) x 4 = 20480 + outputs 4096, block penalty
  # 1.75 (dim < 64), over HBM; backward twice; outputs over the intra-host link both ways.
  fwd = (1280 + 20480 + 4096) * 1.75 / trp.HBM_MEM_BW
  assert p.fwd_compute == pytest.approx(fwd) and p.bwd_compute == pytest.approx(2 * fwd)
  assert p.fwd_comms == pytest.approx(4096 / trp.INTRA_NODE_BANDWIDTH) == p.bwd_comms
  assert p.total == pytest.approx(3 * fwd + 2 * 4096 / trp.INTRA_NODE_BANDWIDTH)
  rw = trp.shard_perf('row_wise', 250, 16, 2.5, TOPO)
  out = 4096
  assert rw.fwd_compute == pytest.approx((320 + 10 * 4 * 16 * 4 + out) / trp.HBM_MEM_BW)
  assert rw.bwd_comms == pytest.approx(out / trp.INTRA_NODE_BANDWIDTH
                                       + out * 2.455 / trp.HBM_MEM_BW)
  dp = trp.shard_perf('data_parallel', 1000, 16, 2.5, TOPO)
  table_bytes = 64000
  assert dp.fwd_comms == 0
  assert dp.bwd_comms == pytest.approx(table_bytes / (trp.CROSS_NODE_BANDWIDTH * 4)
                                       + table_bytes * 9.22 / (0.5 * trp.HBM_MEM_BW))


def test_shard_sizes_as_torchrec():
  assert [s[0] for s in trp.shard_sizes('row_wise', 10, 8, 4, 4)] == [3, 3, 3, 1]
  assert [s[0] for s in trp.shard_sizes('row_wise', 5, 8, 4, 4)] == [2, 2, 1, 0]
  assert [s[1] for s in trp.shard_sizes('column_wise', 10, 256, 4, 4)] == [128, 128]
  assert trp.cw_block(384) == 128 and trp.cw_block(200) == 200 and trp.cw_block(64) == 64
  grid = trp.shard_sizes('grid', 10, 256, 4, 2)
  assert [(s[0], s[1], s[2], s[3]) for s in grid] == [(5, 128, 0, 0), (5, 128, 5, 0),
                                                      (5, 128, 0, 128), (5, 128, 5, 128)]


@pytest.mark.parametrize('kind', trp.KINDS)
def test_each_kind_becomes_a_valid_plan(kind):
  ts = tables(6, seed=7) + [table('wide', 30, 256, 2.0)]
  result = trp.plan(ts, 2, 2, None, 64, kinds=(kind,))
  result.plan.validate([t.config() for t in ts])
  assert {s.sharding_type for s in result.plan.tables.values()} == {kind}
  if kind in ('column_wise', 'table_column_wise'):
    assert len(result.plan.tables['wide'].devices) == 2  # 256 = 2 blocks of 128
  if kind == 'grid':
    assert len(result.plan.tables['wide'].hosts) == 2


def test_planner_balances_and_reports_no_fit():
  ts = tables(12, seed=8)
  result = trp.plan(ts, 1, 4, None, 64)
  assert result.proposals > 1 and result.rating > 0
  result.plan.validate([t.config() for t in ts])
  with pytest.raises(trp.NoFitError, match=r"torchrec planner: table 't\d+' .* fits no device"):
    trp.plan(ts, 1, 2, 1000, 64)
