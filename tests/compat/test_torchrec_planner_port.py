"""jaxrec.planner.torchrec_port against TorchRec's own planner functions (when installed).

Shard sizes (``calculate_shard_sizes_and_offsets``), per-shard input / output bytes
(``_calculate_shard_io_sizes``), optimizer-state multipliers and the perf estimator (its
per-kind evaluators on a ``ShardPerfContext``) agree with the port to float rounding.
"""

import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('torchrec')

# pylint: disable=g-import-not-at-top,wrong-import-position
import torchrec.optim as trec_optim
from torchrec.distributed.planner.estimator.config import EmbeddingPerfEstimatorConfig
from torchrec.distributed.planner.estimator.estimator import get_embedding_perf_sharding_evaluator
from torchrec.distributed.planner.estimator.types import ShardPerfContext
from torchrec.distributed.planner.shard_estimators import (_calculate_shard_io_sizes,
                                                           _get_optimizer_multipler)
from torchrec.distributed.planner.types import BasicCommsBandwidths
from torchrec.distributed.sharding_plan import calculate_shard_sizes_and_offsets

from jaxrec.planner import torchrec_port as trp
# pylint: enable=g-import-not-at-top,wrong-import-position

SHAPES = [(1000, 16), (10, 8), (5, 256), (777, 384)]
TORCHREC_NAME = {'grid': 'grid_shard'}  # ShardingType.GRID_SHARD; the rest are spelt alike
MESHES = [(4, 4), (8, 4), (4, 2)]  # (world, local)


@pytest.mark.parametrize('world,local', MESHES)
@pytest.mark.parametrize('kind', trp.KINDS)
def test_shard_sizes_and_io_bytes_match_torchrec(kind, world, local):
  for rows, cols in SHAPES:
    sizes, offsets = calculate_shard_sizes_and_offsets(torch.empty(rows, cols), world, local,
                                                       TORCHREC_NAME.get(kind, kind))
    mine = trp.shard_sizes(kind, rows, cols, world, local)
    assert [[s[0], s[1]] for s in mine] == sizes, (rows, cols)
    assert [[s[2], s[3]] for s in mine] == offsets, (rows, cols)
    b, pooling = 16, 2.5
    inp, out = _calculate_shard_io_sizes(TORCHREC_NAME.get(kind, kind), [b], world, local,
                                         [pooling], cols, sizes, 8, 4, [1.0], True)
    topo = trp.Topology(world, local, 10 ** 12, b)
    got = [trp.io_sizes(kind, s[1], s[0] * s[1] == 0, pooling, topo) for s in mine]
    assert [g[0] for g in got] == inp and [g[1] for g in got] == out, (rows, cols)


def test_optimizer_multipliers_match_torchrec():
  shape = torch.Size([100, 16])
  for name, cls in (('sgd', trec_optim.SGD), ('adam', trec_optim.Adam),
                    ('rowwise_adagrad', trec_optim.RowWiseAdagrad),
                    ('adagrad', trec_optim.Adagrad)):
    assert trp.OPTIMIZER_MULTIPLIER[name](16) == _get_optimizer_multipler(cls, shape), name


@pytest.mark.parametrize('world,local', MESHES)
@pytest.mark.parametrize('kind', trp.KINDS)
def test_perf_estimates_match_torchrec(kind, world, local):
  config = EmbeddingPerfEstimatorConfig()
  name = TORCHREC_NAME.get(kind, kind)
  evaluator = get_embedding_perf_sharding_evaluator(name)
  topo = trp.Topology(world, local, 10 ** 12, 16)
  for rows, dim, pooling in ((1000, 16, 2.5), (300, 64, 0.5), (50, 128, 7.0)):
    bw = trp.HBM_MEM_BW * (0.5 if kind == 'data_parallel' else 1.0)
    ctx = ShardPerfContext(sharding_type=name, compute_kernel='fused', hash_size=rows,
                           emb_dim=dim, batch_sizes=[16], num_poolings=[1.0],
                           input_lengths=[pooling], world_size=world, local_world_size=local,
                           intra_group_size=local, device_bw=bw,
                           comms_bandwidths=BasicCommsBandwidths())
    want = evaluator.compute_perf(ctx, config)
    got = trp.shard_perf(kind, rows, dim, pooling, topo)
    for field in ('fwd_compute', 'fwd_comms', 'bwd_compute', 'bwd_comms', 'input_dist_comms'):
      assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-9), (field, dim)
    assert got.total == pytest.approx(want.total, rel=1e-9)


def _torchrec_plan(ts, world, local, cap, batch_size):
  """TorchRec's EmbeddingShardingPlanner on an EmbeddingBagCollection of ``ts`` (meta tensors),
  told what the port is told: fused / dense kernels, the pooling factors, no reservation, no
  optimizer state (the port runs with optimizer 'sgd')."""
  # pylint: disable=g-import-not-at-top
  from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
  from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
  from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
  from torchrec.modules.embedding_configs import EmbeddingBagConfig
  from torchrec.modules.embedding_modules import EmbeddingBagCollection
  # pylint: enable=g-import-not-at-top
  ebc = EmbeddingBagCollection(
      tables=[EmbeddingBagConfig(name=t.name, embedding_dim=t.dim, num_embeddings=t.rows,
                                 feature_names=[t.name]) for t in ts], device=torch.device('meta'))
  topo = Topology(world_size=world, local_world_size=local, compute_device='cuda', hbm_cap=cap)
  constraints = {t.name: ParameterConstraints(compute_kernels=['fused', 'dense'],
                                              pooling_factors=[t.pooling]) for t in ts}
  planner = EmbeddingShardingPlanner(topology=topo, batch_size=batch_size // world,
                                     constraints=constraints,
                                     storage_reservation=FixedPercentageStorageReservation(0.0))
  plan = planner.plan(ebc, [EmbeddingBagCollectionSharder()])
  out = {}
  for name, ps in plan.plan[''].items():
    kind = {'grid_shard': 'grid'}.get(ps.sharding_type, ps.sharding_type)
    if kind in ('table_wise', 'column_wise', 'table_column_wise'):
      out[name] = (kind, tuple(ps.ranks), ())
    elif kind == 'table_row_wise':
      out[name] = (kind, (), (ps.ranks[0] // local,))
    elif kind == 'grid':
      out[name] = (kind, (), tuple(r // local for r in ps.ranks[::local]))
    else:
      out[name] = (kind, (), ())
  return out


@pytest.mark.parametrize('world,local,fill,seed,batch', [
    (4, 2, 0.3, 7, 64), (4, 4, 0.5, 8, 64), (8, 4, 0.2, 9, 64), (2, 2, 0.6, 10, 64),
    (4, 2, 0.05, 11, 2048), (8, 2, 0.1, 12, 512)])
def test_the_planner_chooses_what_torchrec_chooses(world, local, fill, seed, batch):
  # Row-wise, table-wise, table-row-wise and mixes of them, as TorchRec picks them.
  from tests.planner.common import tables  # pylint: disable=g-import-not-at-top
  ts = tables(7, seed=seed)
  cap = int(sum(t.num_bytes for t in ts) / world / fill)
  want = _torchrec_plan(ts, world, local, cap, batch)
  got = trp.plan(ts, world // local, local, cap, batch, optimizer='sgd').plan
  assert {k: (v.sharding_type, v.devices, v.hosts) for k, v in got.tables.items()} == want
