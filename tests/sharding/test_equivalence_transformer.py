"""The field transformer (scanned block stack) on 8 emulated devices: every FSDP strategy with and
without per-layer remat, tensor parallelism, and the explicit shard_map FULL_SHARD reproduce the
single-device loss trajectory; the collectives are where each implementation puts them."""

import jax
import numpy as np
import pytest

from jaxrec.models.transformer import FieldTransformer
from jaxrec.sharding import hlo
from jaxrec.sharding.fsdp import ShardingConfig
from tests.sharding import common

MODEL = FieldTransformer(common.SCHEMA, embedding_dim=16, num_layers=2, num_heads=2, head_dim=8,
                         mlp_dim=32)
CASES = {  # name: (strategy, mesh axes, hosts, implementation)
    'NO_SHARD': ('NO_SHARD', {'data': -1, 'fsdp': 1, 'tensor': 1}, 0, 'gspmd'),
    'FULL_SHARD': ('FULL_SHARD', {'data': 2, 'fsdp': 4, 'tensor': 1}, 0, 'gspmd'),
    'SHARD_GRAD_OP': ('SHARD_GRAD_OP', {'data': 1, 'fsdp': -1, 'tensor': 1}, 0, 'gspmd'),
    'HYBRID_SHARD': ('HYBRID_SHARD', {'data': 1, 'fsdp': -1, 'tensor': 1}, 2, 'gspmd'),
    'FULL_SHARD/shard_map': ('FULL_SHARD', {'data': 1, 'fsdp': -1, 'tensor': 1}, 0,
                             'shard_map'),
}


@pytest.fixture(scope='module')
def reference():
  batches = common.make_batches()
  losses, initial = common.reference_run(MODEL, batches)
  return batches, losses, initial


def _run(reference, strategy, axes, hosts, implementation, remat='none'):
  batches, want, initial = reference
  model = MODEL.clone(remat_policy=remat)  # per-layer remat inside the scanned stack
  config = ShardingConfig(strategy, implementation=implementation)
  got, trainer, compiled = common.sharded_run(model, common.mesh_for(axes, hosts), config,
                                              batches, initial)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  return trainer, hlo.collectives(compiled.as_text())


# Per-layer remat changes where parameters are gathered: checked with the strategies that gather
# per layer in the backward pass (FULL_SHARD, implicit and explicit); the others without it.
@pytest.mark.parametrize('name,remat', [(n, 'none') for n in CASES]
                         + [('FULL_SHARD', 'full'), ('FULL_SHARD/shard_map', 'full')])
def test_strategy_matches_single_device(reference, name, remat):
  strategy, axes, hosts, implementation = CASES[name]
  trainer, ops = _run(reference, strategy, axes, hosts, implementation, remat)
  kinds = {(op.kind, op.group_size) for op in ops}
  operands = lambda kind: sum(len(op.dtypes) for op in ops if op.kind == kind)  # XLA combines ops
  if name in ('NO_SHARD', 'FULL_SHARD', 'SHARD_GRAD_OP', 'HYBRID_SHARD'):
    common.assert_strategy_gathers(name, kinds)
    if name == 'NO_SHARD':
      assert operands('all-gather') == operands('reduce-scatter') == 0
      return
  else:
    # Explicit FULL_SHARD: an all-gather per sharded parameter in the forward pass (the stack's
    # inside the scan body, once per layer) and a reduce-scatter per sharded gradient; with remat
    # the backward pass gathers the stack's parameters again (all those its gradients need).
    sharded = [n for d, n in zip(jax.tree.leaves(trainer.plan.param_dims),
                                 jax.tree.leaves(trainer.plan.param_names))
               if any('fsdp' in t for t in d)]
    in_stack = sum('layers' in n for n in sharded)
    assert operands('reduce-scatter') >= len(sharded)
    if remat == 'none':
      assert operands('all-gather') == len(sharded)
    else:
      assert operands('all-gather') >= len(sharded) + in_stack // 2
  assert trainer.report.fraction <= 0.1


def test_tensor_parallel_matches_single_device(reference):
  """fsdp x tensor: 'mlp' and 'heads' dimensions split over the tensor axis as well."""
  trainer, ops = _run(reference, 'FULL_SHARD', {'data': 1, 'fsdp': 4, 'tensor': 2}, 0, 'gspmd')
  kernel = trainer.plan.param_dims['stack']['layers']['mlp_in']['kernel']
  assert kernel == ((), ('fsdp',), ('tensor',))  # [layers, embed, mlp]
  assert any(op.kind == 'all-gather' for op in ops)
