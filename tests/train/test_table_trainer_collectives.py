"""Each sharding type's collectives, by kind and replica group, in the one trainer's compiled step.

The tiny DLRM of test_table_trainer with every table of one type on 2 hosts x 4 devices. The
dense parameters are replicated, so their gradient all-reduce over all devices is expected; any
other reduction over all devices (a fallback of the embedding output distribution to a global
all-reduce or reduce-scatter) fails the byte bound or the group checks.
"""

import jax
import numpy as np
import pytest

from jaxrec.models import build_model
from jaxrec.sharding import hlo
from jaxrec.sharding.embedding_plan import SHARDING_TYPES
from jaxrec.train import state as state_lib
from tests.train.test_table_trainer import SCHEMA, SMALL, _batches, _sharded

ALL = (tuple(range(8)),)
HOSTS = ((0, 1, 2, 3), (4, 5, 6, 7))  # reduce-scatter inside each host
PEERS = ((0, 4), (1, 5), (2, 6), (3, 7))  # all-to-all across the hosts' peers
SCALARS = 64  # loss, norms, the id-overflow flag: a few scalar all-reduces


def _step_collectives(kind: str, optimizer: str = 'dense'):
  model = build_model('dlrm', SCHEMA, embedding_dim=4, **SMALL['dlrm'])
  optim = state_lib.OptimConfig(learning_rate=0.05, max_grad_norm=1.0,
                                embedding_regularizer=1e-3 if optimizer == 'dense' else 0.0)
  trainer = _sharded(model, kind, optimizer=optimizer, optim=optim)
  assert {s.sharding_type for s in trainer.plan.tables.values()} == {kind}
  state, _ = trainer.init_state()
  batch = _batches(1)[0]
  text = trainer.lower_train_step(state, trainer.global_batch(batch)).compile().as_text()
  dense = sum(x.size * 4 for x in jax.tree.leaves(state.params['model']))
  tables = sum(t.config.num_embeddings * t.config.embedding_dim * 4 for t in trainer.tables)
  return hlo.collectives(text), dense, tables


def _groups(ops, kind, dtype):
  return {op.replica_groups for op in ops if op.kind == kind and dtype in op.dtypes}


@pytest.mark.parametrize('kind', SHARDING_TYPES)
def test_train_step_collectives(kind):
  ops, dense, tables = _step_collectives(kind)
  reduced = sum(op.result_bytes for op in ops if op.kind == 'all-reduce')
  assert all(op.replica_groups == ALL for op in ops if op.kind == 'all-reduce'), ops
  if kind == 'data_parallel':
    # Replicated tables: their gradient joins the dense all-reduce (TorchRec's DP); no input or
    # output distribution.
    assert reduced >= dense + tables, (reduced, dense, tables)
    assert not [op for op in ops if op.kind in ('all-to-all', 'reduce-scatter', 'all-gather')]
    return
  # No table-sized or output-sized all-reduce: only the dense gradient and scalars.
  assert reduced <= dense + SCALARS, (reduced, dense)
  # Ids go out in one int32 all-to-all over every device.
  assert _groups(ops, 'all-to-all', 's32') == {ALL}, ops
  if kind in ('table_wise', 'column_wise', 'table_column_wise'):
    # Outputs back (forward) and their gradients out (backward): all-to-all over every device.
    assert _groups(ops, 'all-to-all', 'f32') == {ALL}, ops
    assert not [op for op in ops if op.kind == 'reduce-scatter' or
                (op.kind == 'all-gather' and 'f32' in op.dtypes)], ops
  elif kind == 'row_wise':
    # Partial sums reduce-scattered over every device; the backward all-gathers their gradient.
    assert _groups(ops, 'reduce-scatter', 'f32') == {ALL}, ops
    assert _groups(ops, 'all-gather', 'f32') == {ALL}, ops
    assert not _groups(ops, 'all-to-all', 'f32'), ops
  else:  # table_row_wise, grid
    # Reduce-scatter inside each host, all-to-all across the peers of the other host; the
    # backward: all-to-all across peers, all-gather inside the host.
    assert _groups(ops, 'reduce-scatter', 'f32') == {HOSTS}, ops
    assert _groups(ops, 'all-to-all', 'f32') == {PEERS}, ops
    assert _groups(ops, 'all-gather', 'f32') == {HOSTS}, ops


def test_sparse_data_parallel_gathers_touched_rows():
  # Fused sparse optimizer on replicated tables: the touched rows' ids and gradients are
  # all-gathered (every replica applies them), never a dense gradient all-reduce.
  ops, dense, _ = _step_collectives('data_parallel', 'rowwise_adagrad')
  assert _groups(ops, 'all-gather', 's32') == {ALL} and _groups(ops, 'all-gather', 'f32') == {ALL}
  assert sum(op.result_bytes for op in ops if op.kind == 'all-reduce') <= dense + SCALARS
  assert not [op for op in ops if op.kind in ('all-to-all', 'reduce-scatter')]
