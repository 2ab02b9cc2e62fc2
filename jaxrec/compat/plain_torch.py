"""jaxrec's DLRM and DLRM_DCN in plain PyTorch (``torch.nn`` only; no TorchRec or fbgemm).

The baseline where TorchRec cannot be installed (e.g. a CUDA machine without fbgemm-gpu). Each
model computes jaxrec's function in jaxrec's own order, so weights copy one to one (transposes
of dense kernels only, no permutation):

* :class:`PlainDLRM` = :class:`~jaxrec.models.dlrm.DLRM` with ``interaction='dot'``,
  ``activation='relu'``, ``batch_norm=False`` and no dropout: fields ``[e_1..e_F, dense_emb]``
  (schema order, the bottom MLP's output last), pairwise dot products in row-major
  upper-triangle order, top input ``[pairs, dense_emb]``.
* :class:`PlainDLRMDCN` = :class:`~jaxrec.compat.dlrm_dcn.DLRMDCN`: cross input
  ``x0 = [e_1..e_F, dense_emb]`` flattened, low-rank cross layers
  ``x0 * ((x V) U + b) + x``, then the hidden ReLU layers and a 1-wide output layer.

Embeddings: one ``nn.EmbeddingBag(mode='sum')`` per sparse field (``embeddings[i]`` serves
``schema.sparse[i]``), fed fixed-length bags with per-sample weights that encode jaxrec's
semantics (``jaxrec.embeddings.collection.bag_lookup``): padding slots and ids outside
``[0, vocab)`` weigh 0 (so they add nothing and get no gradient), multi-hot weights multiply
their rows, and ``'mean'`` pooling divides the weighted sum by ``max(bag length, 1)`` (the bag
length counts out-of-range ids, as jaxrec's does). Gradients are dense, as jaxrec's.

Parameters (jaxrec path <- torch):

* ``embedding/<field>`` ``[V, d]`` <- ``embeddings[i].weight`` ``[V, d]``;
* every Dense ``kernel [in, out]`` / ``bias [out]`` <- ``nn.Linear.weight.T`` / ``.bias``
  (``bottom_mlp/{dense_i, output}``, ``top_mlp/{dense_i, output}`` for DLRM,
  ``stacked_dnn/dense_i`` and ``fc/output`` for DLRM_DCN);
* ``crossnet/cross_l/V [D, r]`` <- ``crossnet[l].v.weight.T`` (``nn.Linear(D, r, bias=False)``),
  ``U [r, D]`` <- ``crossnet[l].u.weight.T`` and ``bias [D]`` <- ``crossnet[l].u.bias``.

Example::

  torch_model = plain_torch_like(jax_model)
  params_to_plain_torch(params, jax_model, torch_model)
  *inputs, label, weight = batch_to_plain_torch(batch, jax_model.schema)
  torch_model(*inputs)          # logits [B], jaxrec's to float32 rounding
  optimizer = torch.optim.Adam(torch_model.parameters(), lr=1e-3)
  plain_train_step(torch_model, optimizer, *inputs, label, weight)
  params = params_from_plain_torch(torch_model, jax_model)
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from flax import traverse_util

from jaxrec.compat.dlrm_dcn import DLRMDCN
from jaxrec.compat.params_check import check_shapes, expected_shapes
from jaxrec.compat.params_check import example_batch  # noqa: F401  (part of this module's API)
from jaxrec.data.schema import FeatureSchema
from jaxrec.layers.mlp import get_activation
from jaxrec.models.dlrm import DLRM

PyTree = Any
JaxModel = Union[DLRM, DLRMDCN]


# ---------------------------------------------------------------------------------------------
# Modules.


def _mlp(sizes: Sequence[int], last_relu: bool) -> torch.nn.Sequential:
  """``Linear(sizes[0], sizes[1]) -> ReLU -> ...``; ReLU after the last layer iff ``last_relu``."""
  layers = []
  for i in range(len(sizes) - 1):
    layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
    if i < len(sizes) - 2 or last_relu:
      layers.append(torch.nn.ReLU())
  return torch.nn.Sequential(*layers)


class SparseArch(torch.nn.Module):
  """One ``nn.EmbeddingBag(mode='sum')`` per sparse field, jaxrec's pooling semantics.

  Call: the first five model inputs of :func:`batch_to_plain_torch` (``sparse``, ...
  ``multi_hot_lengths``).

  Returns:
    ``[B, F, d]``, fields in schema order.
  """

  def __init__(self, schema: FeatureSchema, dim: int):
    super().__init__()
    self.schema = schema
    self.embeddings = torch.nn.ModuleList(
        torch.nn.EmbeddingBag(f.vocab_size, dim, mode='sum') for f in schema.sparse)

  def forward(self, sparse: torch.Tensor, sparse_weights: Optional[torch.Tensor],
              multi_hot_ids: torch.Tensor, multi_hot_weights: torch.Tensor,
              multi_hot_lengths: torch.Tensor) -> torch.Tensor:
    outs, oh, mh = [], 0, 0
    for field, bag in zip(self.schema.sparse, self.embeddings):
      if not field.multi_hot:
        w = None if sparse_weights is None else sparse_weights[:, oh:oh + 1]
        outs.append(bag(sparse[:, oh:oh + 1], per_sample_weights=w))  # [B, d]
        oh += 1
        continue
      length = field.max_length
      pooled = bag(multi_hot_ids[:, mh, :length], per_sample_weights=multi_hot_weights[:, mh,
                                                                                       :length])
      if field.pooling == 'mean':
        pooled = pooled / multi_hot_lengths[:, mh:mh + 1]  # lengths clamped to >= 1
      outs.append(pooled)  # [B, d]
      mh += 1
    return torch.stack(outs, dim=1)  # [B, F, d]


class PlainDLRM(torch.nn.Module):
  """jaxrec ``DLRM`` (dot interaction, ReLU, no BatchNorm / dropout) in plain PyTorch.

  Args:
    schema: the feature schema (without dense features there is no bottom MLP).
    embedding_dim: ``d``.
    bottom_mlp_units: bottom MLP hidden sizes (then a ``d``-wide ReLU output layer).
    top_mlp_units: top MLP hidden sizes (then a 1-wide linear output layer).

  Call: the six model inputs of :func:`batch_to_plain_torch`.

  Returns:
    logits ``float32 [B]``.
  """

  def __init__(self, schema: FeatureSchema, embedding_dim: int, bottom_mlp_units: Sequence[int],
               top_mlp_units: Sequence[int]):
    super().__init__()
    self.sparse_arch = SparseArch(schema, embedding_dim)
    self.bottom_mlp = (_mlp([schema.num_dense, *bottom_mlp_units, embedding_dim], True)
                       if schema.num_dense else None)
    fields = schema.num_fields + (1 if schema.num_dense else 0)
    rows, cols = np.triu_indices(fields, k=1)  # jaxrec.layers.interactions.pair_indices
    self.register_buffer('pair_rows', torch.from_numpy(rows.astype(np.int64)), persistent=False)
    self.register_buffer('pair_cols', torch.from_numpy(cols.astype(np.int64)), persistent=False)
    top_in = len(rows) + (embedding_dim if schema.num_dense else 0)
    self.top_mlp = _mlp([top_in, *top_mlp_units, 1], False)

  def forward(self, dense: torch.Tensor, sparse: torch.Tensor,
              sparse_weights: Optional[torch.Tensor], multi_hot_ids: torch.Tensor,
              multi_hot_weights: torch.Tensor, multi_hot_lengths: torch.Tensor) -> torch.Tensor:
    emb = self.sparse_arch(sparse, sparse_weights, multi_hot_ids, multi_hot_weights,
                           multi_hot_lengths)  # [B, F, d]
    dense_emb = None
    if self.bottom_mlp is not None:
      dense_emb = self.bottom_mlp(dense)  # [B, d]
      emb = torch.cat([emb, dense_emb[:, None, :]], dim=1)  # [B, F + 1, d]
    gram = torch.bmm(emb, emb.transpose(1, 2))  # [B, F', F']
    top_in = gram[:, self.pair_rows, self.pair_cols]  # [B, F'(F'-1)/2]
    if dense_emb is not None:
      top_in = torch.cat([top_in, dense_emb], dim=1)
    return self.top_mlp(top_in)[:, 0]


class LowRankCross(torch.nn.Module):
  """``x0 * ((x V) U + b) + x`` with ``v = Linear(D, r, bias=False)``, ``u = Linear(r, D)``."""

  def __init__(self, dim: int, low_rank: int):
    super().__init__()
    self.v = torch.nn.Linear(dim, low_rank, bias=False)
    self.u = torch.nn.Linear(low_rank, dim)

  def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x0 * self.u(self.v(x)) + x  # [B, D]


class PlainDLRMDCN(torch.nn.Module):
  """jaxrec ``DLRMDCN`` (TorchRec's DLRM_DCN in jaxrec's field order) in plain PyTorch.

  Args:
    schema: the feature schema (without dense features ``x0`` is the flattened embeddings).
    embedding_dim: ``d``.
    bottom_mlp_units: bottom MLP hidden sizes (then a ``d``-wide ReLU output layer).
    num_cross_layers / low_rank: the cross network.
    top_mlp_units: over-arch hidden sizes (then a 1-wide linear output layer).

  Call: the six model inputs of :func:`batch_to_plain_torch`.

  Returns:
    logits ``float32 [B]``.
  """

  def __init__(self, schema: FeatureSchema, embedding_dim: int, bottom_mlp_units: Sequence[int],
               num_cross_layers: int, low_rank: int, top_mlp_units: Sequence[int]):
    super().__init__()
    self.sparse_arch = SparseArch(schema, embedding_dim)
    self.bottom_mlp = (_mlp([schema.num_dense, *bottom_mlp_units, embedding_dim], True)
                       if schema.num_dense else None)
    width = (schema.num_fields + (1 if schema.num_dense else 0)) * embedding_dim
    self.crossnet = torch.nn.ModuleList(LowRankCross(width, low_rank)
                                        for _ in range(num_cross_layers))
    self.stacked_dnn = _mlp([width, *top_mlp_units], True)
    self.fc = torch.nn.Linear(top_mlp_units[-1], 1)

  def forward(self, dense: torch.Tensor, sparse: torch.Tensor,
              sparse_weights: Optional[torch.Tensor], multi_hot_ids: torch.Tensor,
              multi_hot_weights: torch.Tensor, multi_hot_lengths: torch.Tensor) -> torch.Tensor:
    emb = self.sparse_arch(sparse, sparse_weights, multi_hot_ids, multi_hot_weights,
                           multi_hot_lengths)  # [B, F, d]
    x0 = emb.flatten(1)  # [B, F d]
    if self.bottom_mlp is not None:
      x0 = torch.cat([x0, self.bottom_mlp(dense)], dim=1)  # [B, D]
    x = x0
    for layer in self.crossnet:
      x = layer(x0, x)
    return self.fc(self.stacked_dnn(x))[:, 0]


PlainModel = Union[PlainDLRM, PlainDLRMDCN]


def _check_supported(jax_model: JaxModel) -> None:
  """Rejects jaxrec settings the plain models do not implement, naming the argument."""
  name = type(jax_model).__name__
  if not isinstance(jax_model, (DLRM, DLRMDCN)):
    raise TypeError(f'plain_torch: expected jaxrec DLRM or DLRMDCN, got {name}')
  if get_activation(jax_model.activation) is not get_activation('relu'):
    raise ValueError(f"{name}: activation={jax_model.activation!r}; the plain PyTorch models "
                     "use ReLU (activation='relu')")
  if isinstance(jax_model, DLRM):
    if jax_model.interaction != 'dot':
      raise ValueError(f"DLRM: interaction={jax_model.interaction!r}; the plain PyTorch DLRM "
                       "implements interaction='dot' only")
    if jax_model.batch_norm:
      raise ValueError('DLRM: batch_norm=True; the plain PyTorch DLRM has no BatchNorm')
    for arg in ('top_dropout_rate', 'bottom_dropout_rate'):
      if getattr(jax_model, arg):
        raise ValueError(f'DLRM: {arg}={getattr(jax_model, arg)!r}; the plain PyTorch DLRM has '
                         'no dropout (set it to 0)')


def plain_torch_like(jax_model: JaxModel) -> PlainModel:
  """A freshly initialised (PyTorch defaults) plain model of ``jax_model``'s architecture.

  Raises:
    TypeError: not a jaxrec ``DLRM`` / ``DLRMDCN``.
    ValueError: a setting the plain models do not implement (the message names it).
  """
  _check_supported(jax_model)
  m = jax_model
  if isinstance(m, DLRMDCN):
    return PlainDLRMDCN(m.schema, m.embedding_dim, tuple(m.bottom_mlp_units),
                        m.num_cross_layers, m.low_rank, tuple(m.top_mlp_units))
  return PlainDLRM(m.schema, m.embedding_dim, tuple(m.bottom_mlp_units), tuple(m.top_mlp_units))


# ---------------------------------------------------------------------------------------------
# Parameters.


def _linears(seq: Optional[torch.nn.Sequential]) -> list[torch.nn.Linear]:
  return [] if seq is None else [m for m in seq if isinstance(m, torch.nn.Linear)]


def _tensor_map(torch_model: PlainModel, jax_model: JaxModel
                ) -> list[tuple[torch.Tensor, tuple[str, ...], bool]]:
  """``(torch tensor, jaxrec path, transposed)`` for every parameter."""
  out = [(bag.weight, ('embedding', f.name), False)
         for f, bag in zip(jax_model.schema.sparse, torch_model.sparse_arch.embeddings)]

  def linears(lins, prefix, last_name):
    for i, lin in enumerate(lins):
      path = prefix + (last_name if i == len(lins) - 1 and last_name else f'dense_{i}',)
      out.append((lin.weight, path + ('kernel',), True))
      out.append((lin.bias, path + ('bias',), False))

  linears(_linears(torch_model.bottom_mlp), ('bottom_mlp',), 'output')
  if isinstance(torch_model, PlainDLRMDCN):
    for i, layer in enumerate(torch_model.crossnet):
      base = ('crossnet', f'cross_{i}')
      out += [(layer.v.weight, base + ('V',), True), (layer.u.weight, base + ('U',), True),
              (layer.u.bias, base + ('bias',), False)]
    linears(_linears(torch_model.stacked_dnn), ('stacked_dnn',), None)
    linears([torch_model.fc], ('fc',), 'output')
  else:
    linears(_linears(torch_model.top_mlp), ('top_mlp',), 'output')
  return out


def _check_pair(torch_model: PlainModel, jax_model: JaxModel) -> None:
  _check_supported(jax_model)
  want = PlainDLRMDCN if isinstance(jax_model, DLRMDCN) else PlainDLRM
  if type(torch_model) is not want:  # pylint: disable=unidiomatic-typecheck
    raise TypeError(f'jaxrec {type(jax_model).__name__} pairs with {want.__name__}, got '
                    f'{type(torch_model).__name__}')
  names = [f.name for f in torch_model.sparse_arch.schema.sparse]
  if names != [f.name for f in jax_model.schema.sparse]:
    raise ValueError(f'plain model fields {names} differ from the jaxrec schema fields '
                     f'{[f.name for f in jax_model.schema.sparse]}')


def params_from_plain_torch(torch_model: PlainModel, jax_model: JaxModel) -> PyTree:
  """jaxrec parameters equal to ``torch_model``'s weights (float32 numpy arrays, on the host).

  Raises:
    TypeError / ValueError: the two architectures differ (the message names the parameter).
  """
  _check_pair(torch_model, jax_model)
  flat = {}
  for tensor, path, transposed in _tensor_map(torch_model, jax_model):
    value = tensor.detach().cpu().numpy().astype(np.float32)
    flat[path] = np.ascontiguousarray(value.T) if transposed else value
  check_shapes(flat, expected_shapes(jax_model), type(jax_model).__name__)
  return traverse_util.unflatten_dict(flat)


def params_to_plain_torch(params: PyTree, jax_model: JaxModel, torch_model: PlainModel) -> None:
  """Copies jaxrec ``params`` into ``torch_model``'s weights in place (on its device).

  Raises:
    TypeError / ValueError: the two architectures differ (the message names the parameter).
  """
  _check_pair(torch_model, jax_model)
  flat = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(params).items()}
  check_shapes(flat, expected_shapes(jax_model), type(jax_model).__name__)
  with torch.no_grad():
    for tensor, path, transposed in _tensor_map(torch_model, jax_model):
      value = flat[path].T if transposed else flat[path]
      if tuple(tensor.shape) != value.shape:
        raise ValueError(f'{"/".join(path)}: plain torch shape {tuple(tensor.shape)} != '
                         f'{value.shape}')
      tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))


# ---------------------------------------------------------------------------------------------
# Batches and the train step.


def batch_to_plain_torch(batch: Mapping[str, np.ndarray], schema: FeatureSchema,
                         device: Union[str, torch.device] = 'cpu', targets: bool = True
                         ) -> tuple:
  """A jaxrec batch dict as the plain models' inputs (and the loss targets), on ``device``.

  Args:
    batch: ``sparse int32 [B, S]``, ``dense float32 [B, num_dense]`` (when the schema has dense
      features), with multi-hot fields ``multi_hot_ids [B, M, L]``, ``multi_hot_lengths [B, M]``
      and optionally ``multi_hot_weights [B, M, L]`` (default 1); with ``targets``, ``label``
      and ``weight`` ``float32 [B]``.
    schema: the batch's schema.
    device: where the tensors go.
    targets: also return ``label`` and ``weight``.

  Returns:
    ``(dense float32 [B, num_dense], sparse int64 [B, S], sparse_weights, multi_hot_ids int64
    [B, M, L], multi_hot_weights float32 [B, M, L], multi_hot_lengths float32 [B, M])`` and,
    with ``targets``, ``label float32 [B], weight float32 [B]``. Ids are clipped into their
    vocabulary; an id outside it, or a slot past its bag's length, gets weight 0.
    ``sparse_weights`` is ``None`` when every one-hot id is in range (plain lookups), else
    ``float32 [B, S]`` (1 valid, 0 outside). ``multi_hot_weights`` holds the effective weights;
    ``multi_hot_lengths`` is ``max(length, 1)`` (the 'mean' divisor).

  Raises:
    ValueError: a missing key or a wrong shape (the message names it).
  """

  def get(key: str) -> np.ndarray:
    if key not in batch:
      raise ValueError(f'batch_to_plain_torch: the batch has no {key!r}')
    return np.asarray(batch[key])

  sparse = get('sparse').astype(np.int64)
  rows = sparse.shape[0]
  if sparse.ndim != 2 or sparse.shape[1] != schema.num_sparse:
    raise ValueError(f"batch_to_plain_torch: 'sparse' has shape {sparse.shape}, expected "
                     f'[batch, {schema.num_sparse}]')
  vocab = np.array([f.vocab_size for f in schema.one_hot_fields], np.int64)
  valid = (sparse >= 0) & (sparse < vocab[None, :])
  sparse_weights = None if valid.all() else valid.astype(np.float32)
  sparse = np.clip(sparse, 0, np.maximum(vocab - 1, 0)[None, :])
  if schema.num_dense:
    dense = get('dense').astype(np.float32)
    if dense.shape != (rows, schema.num_dense):
      raise ValueError(f"batch_to_plain_torch: 'dense' has shape {dense.shape}, expected "
                       f'{(rows, schema.num_dense)}')
  else:
    dense = np.zeros((rows, 0), np.float32)
  m, length = schema.num_multi_hot, schema.max_multi_hot_length
  ids = np.zeros((rows, m, length), np.int64)
  weights = np.zeros((rows, m, length), np.float32)
  lengths = np.ones((rows, m), np.float32)
  if m:
    all_ids, all_lengths = get('multi_hot_ids'), get('multi_hot_lengths')
    all_w = np.asarray(batch.get('multi_hot_weights', np.ones(all_ids.shape, np.float32)))
    for j, f in enumerate(schema.multi_hot_fields):
      fid = all_ids[:, j, :f.max_length].astype(np.int64)  # [B, L_f]
      n = all_lengths[:, j].astype(np.int64)  # [B]
      ok = ((np.arange(f.max_length)[None, :] < n[:, None]) & (fid >= 0) & (fid < f.vocab_size))
      ids[:, j, :f.max_length] = np.clip(fid, 0, f.vocab_size - 1)
      weights[:, j, :f.max_length] = np.where(ok, all_w[:, j, :f.max_length], 0.0)
      lengths[:, j] = np.maximum(n, 1)

  def t(x: Optional[np.ndarray]) -> Optional[torch.Tensor]:
    return None if x is None else torch.from_numpy(np.ascontiguousarray(x)).to(device)

  out = (t(dense), t(sparse), t(sparse_weights), t(ids), t(weights), t(lengths))
  if targets:
    out += (t(get('label').astype(np.float32).reshape(rows)),
            t(get('weight').astype(np.float32).reshape(rows)))
  return out


def weighted_bce(logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
  """jaxrec's loss: mean sigmoid BCE over rows with weight > 0 (``weight`` zeroes padding rows).

  ``logits, label, weight``: ``float32 [B]``; returns a scalar.
  """
  per_row = torch.nn.functional.binary_cross_entropy_with_logits(logits, label, reduction='none')
  return torch.sum(per_row * weight) / torch.clamp(torch.sum(weight), min=1.0)


def plain_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     *prepared: Optional[torch.Tensor]) -> torch.Tensor:
  """One step with jaxrec's loss (as ``jaxrec.compat.torchrec.torch_train_step``).

  Args:
    model: a plain model (or its ``torch.compile`` d wrapper).
    optimizer: over the model's parameters.
    *prepared: the eight tensors of ``batch_to_plain_torch(..., targets=True)``: six model
      inputs, then ``label`` and ``weight``.

  Returns:
    the loss (detached; not synchronised with the device).
  """
  if len(prepared) != 8:
    raise ValueError(f'plain_train_step: expected the 8 tensors of batch_to_plain_torch '
                     f'(targets=True), got {len(prepared)}')
  *inputs, label, weight = prepared
  optimizer.zero_grad(set_to_none=True)
  loss = weighted_bce(model(*inputs), label, weight)
  loss.backward()
  optimizer.step()
  return loss.detach()
