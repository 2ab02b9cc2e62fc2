"""DCNv2 on 8 emulated devices: every FSDP strategy, with and without remat, reproduces the
single-device loss trajectory, and its compiled step holds the strategy's collectives."""

import numpy as np
import pytest

from jaxrec.models.dcnv2 import DCNv2
from jaxrec.sharding import hlo
from jaxrec.sharding.fsdp import ShardingConfig
from tests.sharding import common

# Low-rank experts (axes expert/rank/rank_in), BatchNorm (replicated batch statistics computed
# over the global batch) and dropout (threefry keys are sharding invariant) all take part.
MODEL = DCNv2(common.SCHEMA, embedding_dim=8, num_cross_layers=1, use_low_rank_mixture=True,
              low_rank=8, num_experts=2, parallel_dnn_hidden_units=(32,), dropout_rate=0.1,
              batch_norm=True)
FLAT_DATA = {'data': -1, 'fsdp': 1, 'tensor': 1}
FLAT_FSDP = {'data': 1, 'fsdp': -1, 'tensor': 1}
CASES = {  # strategy: (mesh axes, hosts)
    'NO_SHARD': (FLAT_DATA, 0),
    'FULL_SHARD': (FLAT_FSDP, 0),
    'SHARD_GRAD_OP': (FLAT_FSDP, 0),
    'HYBRID_SHARD': ({'data': 1, 'fsdp': -1, 'tensor': 1}, 2),  # 2 hosts x 4 devices
}


@pytest.fixture(scope='module')
def reference():
  batches = common.make_batches()
  losses, initial = common.reference_run(MODEL, batches)
  return batches, losses, initial


def _kinds(compiled):
  return {(op.kind, op.group_size) for op in hlo.collectives(compiled.as_text())}


# Whole-model remat checked with the strategy that gathers in the backward pass (FULL_SHARD).
@pytest.mark.parametrize('strategy,remat', [(s, 'none') for s in CASES] + [('FULL_SHARD', 'full')])
def test_strategy_matches_single_device(reference, strategy, remat):
  batches, want, initial = reference
  axes, hosts = CASES[strategy]
  config = ShardingConfig(strategy, remat_policy=remat, max_unsharded_fraction=0.15)
  got, trainer, compiled = common.sharded_run(MODEL, common.mesh_for(axes, hosts), config,
                                              batches, initial)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  kinds = _kinds(compiled)
  names = {k for k, _ in kinds}
  if strategy == 'NO_SHARD':
    # Plain data parallelism: gradients all-reduced over the 8 devices, nothing gathered.
    assert ('all-reduce', 8) in kinds and not names & {'all-gather', 'reduce-scatter'}
  elif strategy == 'FULL_SHARD':
    # Parameters all-gathered over fsdp; gradients reduced back onto the shards (XLA:CPU keeps
    # the reduction as all-reduce + dynamic-slice; GPU/TPU rewrite it to reduce-scatter).
    assert ('all-gather', 8) in kinds
    assert ('reduce-scatter', 8) in kinds or ('all-reduce', 8) in kinds
  elif strategy == 'SHARD_GRAD_OP':
    # Sharded update, then the updated parameters all-gathered back to every device.
    assert ('all-gather', 8) in kinds
  else:
    # Gathers inside a host (4 devices); gradients also reduced across the 2 hosts.
    assert ('all-gather', 4) in kinds and ('all-gather', 8) not in kinds
    assert any(k in ('all-reduce', 'reduce-scatter') for k in names)
  if strategy != 'NO_SHARD':
    assert trainer.report.fraction <= 0.15
