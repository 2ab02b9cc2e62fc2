"""The fused sparse optimizers build no dense table gradient: checked in the compiled train step.

A table of a shape no other array has (1009 x 4, whole on one device) is followed through the
optimized HLO of the one trainer's step: every instruction that produces an array of that shape
must be a parameter (the table or its optimizer state), a scatter into one (the touched rows'
update), or a fusion wrapping such a scatter. A dense ``[R, d]`` gradient, a zero-filled table or
an elementwise optimizer update over the whole table would show up as a broadcast, add, multiply,
... of that shape; the dense optimizer's step is checked to have them, so the check can fail.
"""

import collections
import re

import pytest

from jaxrec.data.schema import FeatureSchema, SparseField
from jaxrec.models import build_model
from jaxrec.train import state as state_lib
from jaxrec.train.table_trainer import TableShardedTrainer
from tests.models.tiny import make_batch

SCHEMA = FeatureSchema((SparseField('user', 1009), SparseField('tags', 17, max_length=3,
                                                               pooling='mean'),
                        SparseField('item', 31)), dense=('age',))
TABLE_SHAPE = 'f32[1009,4]'
ALLOWED = {'parameter', 'scatter', 'bitcast', 'copy', 'get-tuple-element', 'tuple'}


def _table_shaped_ops(optimizer: str) -> collections.Counter:
  model = build_model('dlrm', SCHEMA, embedding_dim=4, top_mlp_units=(8,), bottom_mlp_units=(4,))
  optim = state_lib.OptimConfig(learning_rate=0.05, max_grad_norm=0.0)
  batch = make_batch(SCHEMA, rows=32)
  trainer = TableShardedTrainer(model, SCHEMA, state_lib.make_optimizer(optim), optim, batch,
                                'table_wise', optimizer=optimizer, hosts=2)
  assert trainer.plan.tables['embedding/user'].sharding_type == 'table_wise'
  state, _ = trainer.init_state()
  text = trainer.lower_train_step(state, trainer.global_batch(batch)).compile().as_text()
  roots = {}  # fused computation name -> opcode of its root
  computation = None
  for line in text.splitlines():
    head = re.match(r'\s*%?([\w.\-]+) .*\{\s*$', line)
    if head and '=' not in line.split('{')[0]:
      computation = head.group(1)
    root = re.match(r'\s*ROOT %\S+ = \S+ (\S+?)\(', line)
    if root and computation:
      roots[computation] = root.group(1)
  ops = collections.Counter()
  pattern = re.escape(TABLE_SHAPE) + r'\{[^}]*\} (\S+?)\('
  for line in text.splitlines():
    m = re.search(r'= ' + pattern, line)
    if not m:
      continue
    op = m.group(1)
    if op == 'fusion':
      called = re.search(r'calls=%([\w.\-]+)', line).group(1)
      op = f'fusion[{roots.get(called, "?")}]'
    ops[op] += 1
  return ops


def _disallowed(ops: collections.Counter) -> dict:
  return {op: n for op, n in ops.items() if op not in ALLOWED and op != 'fusion[scatter]'}


def test_dense_optimizer_step_has_table_shaped_compute():
  ops = _table_shaped_ops('dense')
  assert _disallowed(ops), ops  # Adam over the whole table: the check sees it


@pytest.mark.parametrize('optimizer', ['rowwise_adagrad', 'adam', 'sgd', 'adagrad'])
def test_sparse_optimizer_step_has_no_dense_table_gradient(optimizer):
  ops = _table_shaped_ops(optimizer)
  assert ops['parameter'] >= 1, ops
  assert _disallowed(ops) == {}, ops
