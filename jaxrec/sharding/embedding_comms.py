"""Bytes an embedding lookup moves per step: TorchRec's planner estimate and the compiled HLO.

TorchRec's planner (``torchrec/distributed/planner/shard_estimators.py``: the per-shard input and
output sizes behind its perf and storage estimators) charges per table, for a global batch
``B``, features of mean bag size ``L_f`` (``sum L`` over the table's ``F`` features), embedding
dim ``d`` (``d_k`` of a column shard), ``W`` devices of which ``W_l`` per host, ids as int64 (8
bytes) and float32 outputs:

  ==================  ==========================================  =================================
  type                ids sent to the shards                      pooled outputs sent back
  ==================  ==========================================  =================================
  table_wise          ``B sum L 8``                               ``B d F 4``
  column_wise,        ``B sum L 8`` per column shard              ``B d_k F 4`` per column shard
  table_column_wise
  row_wise            ``B sum L 8 / W`` per row shard (W shards)   ``B d F 4`` per row shard
  table_row_wise      ``B sum L 8 / W_l`` per row shard (W_l)      ``B d F 4`` per row shard in the
                                                                  host + ``B d F 4 W_l / W`` across
  grid                table_row_wise per column shard             the same per column shard
  data_parallel       0                                           (backward: the ``R d 4`` gradient)
  ==================  ==========================================  =================================

So row-split types send every id once in all (TorchRec's bucketised all-to-all). Weights of
weighted features and the KJT lengths travel too but are not charged.

From a compiled lookup (``hlo_bytes``): the *id bytes* are every int32 all-to-all (ids, their
places and bit-cast weights: everything the input distribution sends) outside a conditional
branch, the *output bytes* every float32 all-to-all plus each reduce-scatter's input (result x
group size, TorchRec's figure); both per device as each op's result, times the devices: the
bytes delivered per step. The row-split types' second pass (``id_buckets``), in a conditional
branch that runs only on a step whose buckets overflow, is counted apart.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from jaxrec.embeddings.config import EmbeddingBagConfig
from jaxrec.sharding import hlo
from jaxrec.sharding.embedding_plan import EmbeddingPlan

ID_BYTES = 8  # TorchRec's BIGINT_DTYPE
OUT_BYTES = 4  # float32 outputs


def torchrec_bytes(plan: EmbeddingPlan, tables: Sequence[EmbeddingBagConfig], batch_size: int,
                   bag_sizes: Optional[Mapping[str, float]] = None) -> tuple[float, float]:
  """``(id bytes, output bytes)`` per step, all devices together, by TorchRec's estimator.

  ``bag_sizes``: mean ids per bag of each feature (default 1). data_parallel tables count 0 ids
  and their gradient all-reduce ``R d 4`` as output.
  """
  bag_sizes = dict(bag_sizes or {})
  w, w_l = plan.num_devices, plan.devices_per_host
  ids = out = 0.0
  for t in tables:
    spec = plan.tables[t.name]
    kind = spec.sharding_type
    n_feat = len(t.feature_names)
    per_table_ids = batch_size * sum(bag_sizes.get(f, 1.0) for f in t.feature_names) * ID_BYTES
    pooled = batch_size * t.embedding_dim * n_feat * OUT_BYTES  # all column shards together
    if kind == 'data_parallel':
      out += t.num_embeddings * t.embedding_dim * OUT_BYTES
    elif kind == 'table_wise':
      ids, out = ids + per_table_ids, out + pooled
    elif kind in ('column_wise', 'table_column_wise'):
      ids, out = ids + len(spec.devices) * per_table_ids, out + pooled
    elif kind == 'row_wise':
      ids, out = ids + per_table_ids, out + w * pooled
    else:  # table_row_wise, grid: per column shard (grid: one per host listed)
      cols = len(spec.hosts)
      ids += cols * per_table_ids
      out += w_l * (pooled + pooled * w_l / w)
  return ids, out


def hlo_bytes(compiled_text: str, num_devices: int) -> tuple[int, int, int]:
  """``(id bytes, output bytes, second-pass id bytes)`` per step of a compiled lookup, all devices
  together. The second pass (row-split types) sits in a conditional branch and runs only on a
  step whose buckets overflow, so it is counted apart."""
  ids = out = second = 0
  for op in hlo.collectives(compiled_text):
    if op.kind == 'all-to-all' and set(op.dtypes) == {'s32'}:
      if op.conditional:
        second += op.result_bytes
      else:
        ids += op.result_bytes
    elif op.kind == 'all-to-all' and set(op.dtypes) == {'f32'}:
      out += op.result_bytes
    elif op.kind == 'reduce-scatter':
      out += op.result_bytes * op.group_size
  return ids * num_devices, out * num_devices, second * num_devices
