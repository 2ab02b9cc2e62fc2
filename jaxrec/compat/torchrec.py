"""Weights and batches between TorchRec's DLRM / DLRM_DCN and jaxrec (needs ``jaxrec[torch]``).

Models (``torchrec.models.dlrm``):

* TorchRec ``DLRM`` <-> jaxrec :class:`~jaxrec.models.dlrm.DLRM` with ``interaction='dot'``,
  ``activation='relu'``, ``batch_norm=False``, ``bottom_mlp_units = dense_arch_layer_sizes[:-1]``,
  ``embedding_dim = dense_arch_layer_sizes[-1]``, ``top_mlp_units = over_arch_layer_sizes[:-1]``
  (``over_arch_layer_sizes[-1]`` must be 1). The two compute the same function; they only order
  the top MLP's input differently. TorchRec stacks ``[dense_emb, e_1..e_F]`` and feeds
  ``[dense_emb, pairs]``; jaxrec stacks ``[e_1..e_F, dense_emb]`` (schema order) and feeds
  ``[pairs, dense_emb]``, pairs in row-major upper-triangle order of each stacking. The
  converter permutes the rows of the top MLP's first kernel, so logits agree exactly and
  gradients map one to one.
* TorchRec ``DLRM_DCN`` <-> :class:`jaxrec.compat.dlrm_dcn.DLRMDCN` (a bottom MLP, plain
  low-rank cross layers, DCNv2's ``'stacked'`` over arch; jaxrec's ``DCNv2`` has neither the
  bottom MLP nor plain low-rank layers). The cross input's field blocks are permuted the same
  way (``V`` rows, ``U`` columns, cross biases, first over-arch kernel rows).

Fields are matched by name: jaxrec field ``f`` is TorchRec feature ``f``, whose table must serve
that feature only (TorchRec can share a table between features; jaxrec cannot). Tables built by
this module are named after their field. Feature order may differ between the two sides.

Layout: a torch ``nn.Linear`` weight is ``[out, in]`` and a flax kernel ``[in, out]``; TorchRec
``LowRankCrossNet`` computes ``x V_t^T W_t^T`` with ``V_t: [r, D]``, ``W_t: [D, r]``, so
``V = V_t^T`` and ``U = W_t^T`` (up to the permutation).

Batches: :func:`batch_to_torchrec` turns a jaxrec batch dict into ``(dense, KeyedJaggedTensor)``;
:func:`torch_train_step` is the TorchRec side of one training step with jaxrec's loss.

Example::

  jax_model, params = dlrm_from_torchrec(torch_model)
  logits = jax_model.apply({'params': params}, batch, train=False)
  dense, kjt = batch_to_torchrec(batch, jax_model.schema)
  torch_logits = torch_model(dense, kjt)[:, 0]          # the same, to float32 rounding
  dlrm_params_to_torchrec(params, jax_model, torch_model)   # and back
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from flax import traverse_util
from torchrec.models.dlrm import DLRM as TorchDLRM
from torchrec.models.dlrm import DLRM_DCN as TorchDLRMDCN
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from jaxrec.compat.dlrm_dcn import DLRMDCN
from jaxrec.compat.params_check import check_shapes, expected_shapes
from jaxrec.compat.params_check import example_batch  # noqa: F401  (part of this module's API)
from jaxrec.data.schema import FeatureSchema, SparseField
from jaxrec.layers.interactions import pair_indices
from jaxrec.layers.mlp import get_activation
from jaxrec.models.dlrm import DLRM

PyTree = Any
JaxModel = Union[DLRM, DLRMDCN]
TorchModel = Union[TorchDLRM, TorchDLRMDCN]

_POOLING = {PoolingType.SUM: 'sum', PoolingType.MEAN: 'mean'}


# ---------------------------------------------------------------------------------------------
# Schema and batches.


def _ebc(torch_model: TorchModel) -> EmbeddingBagCollection:
  return torch_model.sparse_arch.embedding_bag_collection


def _feature_tables(torch_model: TorchModel) -> list[tuple[str, EmbeddingBagConfig]]:
  """(feature name, its table config) in TorchRec's feature order; one feature per table."""
  out = []
  for config in _ebc(torch_model).embedding_bag_configs():
    if len(config.feature_names) != 1:
      raise ValueError(f'TorchRec table {config.name!r} serves features {config.feature_names}; '
                       'jaxrec needs one table per feature')
    out.append((config.feature_names[0], config))
  return out


def _linears(mlp: torch.nn.Module) -> list[torch.nn.Linear]:
  """The nn.Linear layers of a torchrec.modules.mlp.MLP, in order."""
  return [p._linear for p in mlp._mlp]  # pylint: disable=protected-access


def schema_from_torchrec(torch_model: TorchModel, dense_names: Optional[Sequence[str]] = None,
                         max_lengths: Optional[Mapping[str, int]] = None) -> FeatureSchema:
  """The jaxrec schema of a TorchRec DLRM / DLRM_DCN, fields in TorchRec's feature order.

  Args:
    torch_model: the TorchRec model.
    dense_names: names of the dense features (default ``I1, I2, ...``).
    max_lengths: padded bag length of multi-hot features (TorchRec does not record one); every
      other feature is one-hot.
  """
  num_dense = _linears(torch_model.dense_arch.model)[0].in_features
  dense_names = tuple(dense_names) if dense_names is not None else tuple(
      f'I{i + 1}' for i in range(num_dense))
  if len(dense_names) != num_dense:
    raise ValueError(f'dense_names: {len(dense_names)} names for the model\'s {num_dense} dense '
                     'features')
  max_lengths = dict(max_lengths or {})
  fields = []
  for name, config in _feature_tables(torch_model):
    if config.pooling not in _POOLING:
      raise ValueError(f'TorchRec table {config.name!r}: pooling {config.pooling} has no jaxrec '
                       f'equivalent (valid: {list(_POOLING)})')
    fields.append(SparseField(name, config.num_embeddings, max_lengths.pop(name, 1),
                              _POOLING[config.pooling]))
  if max_lengths:
    raise ValueError(f'max_lengths names unknown features {sorted(max_lengths)}')
  return FeatureSchema(tuple(fields), dense_names)


def batch_to_torchrec(batch: Mapping[str, np.ndarray], schema: FeatureSchema
                      ) -> tuple[torch.Tensor, KeyedJaggedTensor]:
  """A jaxrec batch dict as TorchRec inputs.

  Args:
    batch: ``sparse int32 [B, S]``, ``dense float32 [B, num_dense]`` and, with multi-hot fields,
      ``multi_hot_ids [B, M, L]``, ``multi_hot_lengths [B, M]`` (and optional
      ``multi_hot_weights``, which must be 1 on valid positions: TorchRec's unweighted
      EmbeddingBagCollection has no per-id weights).
    schema: the batch's schema.

  Returns:
    ``dense float32 [B, num_dense]`` and a KeyedJaggedTensor keyed by field name in schema order
    (one id per one-hot field and row; a multi-hot row's first ``length`` ids).
  """
  sparse = np.asarray(batch['sparse'])
  rows = sparse.shape[0]
  keys, values, lengths = [], [], []
  oh = mh = 0
  for field in schema.sparse:
    keys.append(field.name)
    if not field.multi_hot:
      values.append(sparse[:, oh].astype(np.int64))
      lengths.append(np.ones(rows, np.int64))
      oh += 1
      continue
    ids = np.asarray(batch['multi_hot_ids'])[:, mh, :field.max_length]
    length = np.asarray(batch['multi_hot_lengths'])[:, mh].astype(np.int64)
    valid = np.arange(field.max_length)[None, :] < length[:, None]  # [B, L]
    if 'multi_hot_weights' in batch:
      w = np.asarray(batch['multi_hot_weights'])[:, mh, :field.max_length]
      if np.any(w[valid] != 1.0):
        raise ValueError(f'batch_to_torchrec: multi_hot_weights of field {field.name!r} are not '
                         'all 1; TorchRec\'s unweighted EmbeddingBagCollection cannot take them')
    values.append(ids[valid].astype(np.int64))  # row-major: row 0's ids, then row 1's, ...
    lengths.append(length)
    mh += 1
  kjt = KeyedJaggedTensor.from_lengths_sync(
      keys=keys, values=torch.from_numpy(np.concatenate(values)),
      lengths=torch.from_numpy(np.concatenate(lengths)))
  dense = torch.from_numpy(np.asarray(batch['dense'], np.float32).reshape(rows, schema.num_dense))
  return dense, kjt


def torch_train_step(torch_model: TorchModel, optimizer: torch.optim.Optimizer,
                     dense: torch.Tensor, kjt: KeyedJaggedTensor, label: torch.Tensor,
                     weight: torch.Tensor) -> torch.Tensor:
  """One TorchRec step with jaxrec's loss: weighted mean BCE over rows with weight > 0.

  Returns the loss (detached).
  """
  optimizer.zero_grad(set_to_none=True)
  logits = torch_model(dense, kjt)[:, 0]
  per_row = torch.nn.functional.binary_cross_entropy_with_logits(logits, label, reduction='none')
  loss = torch.sum(per_row * weight) / torch.clamp(torch.sum(weight), min=1.0)
  loss.backward()
  optimizer.step()
  return loss.detach()


# ---------------------------------------------------------------------------------------------
# Building one side from the other.


def _mlp_sizes(torch_model: TorchModel) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
  """(embedding dim, bottom hidden sizes, over-arch hidden sizes), checking the output is 1."""
  dense = [lin.out_features for lin in _linears(torch_model.dense_arch.model)]
  mlp, last = torch_model.over_arch.model
  if last.out_features != 1:
    raise ValueError(f'TorchRec over arch ends in {last.out_features} outputs; jaxrec models '
                     'give one logit (over_arch_layer_sizes[-1] must be 1)')
  return dense[-1], tuple(dense[:-1]), tuple(lin.out_features for lin in _linears(mlp))


def jaxrec_model_like(torch_model: TorchModel, schema: Optional[FeatureSchema] = None
                      ) -> JaxModel:
  """The jaxrec module computing the same function as ``torch_model``.

  ``DLRM_DCN`` -> :class:`DLRMDCN`; ``DLRM`` -> :class:`DLRM` (``interaction='dot'``, ReLU, no
  BatchNorm, no dropout). ``schema`` defaults to :func:`schema_from_torchrec`.
  """
  schema = schema if schema is not None else schema_from_torchrec(torch_model)
  dim, bottom, top = _mlp_sizes(torch_model)
  if isinstance(torch_model, TorchDLRMDCN):
    cross = torch_model.inter_arch.crossnet
    return DLRMDCN(schema=schema, embedding_dim=dim, bottom_mlp_units=bottom,
                   num_cross_layers=cross._num_layers,  # pylint: disable=protected-access
                   low_rank=cross._low_rank, top_mlp_units=top)  # pylint: disable=protected-access
  if type(torch_model) is not TorchDLRM:  # pylint: disable=unidiomatic-typecheck
    raise TypeError(f'expected torchrec DLRM or DLRM_DCN, got {type(torch_model).__name__}')
  return DLRM(schema=schema, embedding_dim=dim, top_mlp_units=top, bottom_mlp_units=bottom,
              activation='relu', interaction='dot', batch_norm=False)


def _check_convertible(jax_model: JaxModel) -> None:
  """Rejects jaxrec settings that TorchRec's DLRM / DLRM_DCN cannot express."""
  name = type(jax_model).__name__
  if jax_model.schema.num_dense == 0:
    raise ValueError(f'{name}: TorchRec models need dense features; the schema has none (add a '
                     'constant dense feature to both sides, as scripts/compare_torch.py does)')
  if get_activation(jax_model.activation) is not get_activation('relu'):
    raise ValueError(f'{name}: activation={jax_model.activation!r}; TorchRec uses ReLU')
  if not jax_model.top_mlp_units:
    raise ValueError(f'{name}: top_mlp_units is empty; TorchRec OverArch needs a hidden layer')
  if isinstance(jax_model, DLRM):
    if jax_model.interaction != 'dot':
      raise ValueError(f"DLRM: interaction={jax_model.interaction!r}; TorchRec's is 'dot'")
    if jax_model.batch_norm:
      raise ValueError('DLRM: batch_norm=True; TorchRec DLRM has no BatchNorm')
  elif not isinstance(jax_model, DLRMDCN):
    raise TypeError(f'expected jaxrec DLRM or DLRMDCN, got {name}')
  for field in jax_model.schema.sparse:
    if '.' in field.name:
      raise ValueError(f'field {field.name!r}: torch module names cannot contain "."')


def torchrec_model_like(jax_model: JaxModel) -> TorchModel:
  """A freshly initialised TorchRec model of ``jax_model``'s architecture (tables named after
  the fields, features in schema order). Dropout, if any, exists only on the jaxrec side: the
  two agree in eval mode."""
  _check_convertible(jax_model)
  schema = jax_model.schema
  tables = [EmbeddingBagConfig(name=f.name, embedding_dim=jax_model.embedding_dim,
                               num_embeddings=f.vocab_size, feature_names=[f.name],
                               pooling=PoolingType.SUM if f.pooling == 'sum' else PoolingType.MEAN)
            for f in schema.sparse]
  ebc = EmbeddingBagCollection(tables=tables)
  dense_sizes = [*jax_model.bottom_mlp_units, jax_model.embedding_dim]
  over_sizes = [*jax_model.top_mlp_units, 1]
  if isinstance(jax_model, DLRMDCN):
    return TorchDLRMDCN(ebc, schema.num_dense, dense_sizes, over_sizes,
                        dcn_num_layers=jax_model.num_cross_layers,
                        dcn_low_rank_dim=jax_model.low_rank)
  return TorchDLRM(ebc, schema.num_dense, dense_sizes, over_sizes)


# ---------------------------------------------------------------------------------------------
# Permutations between TorchRec's and jaxrec's orders.


def _torch_to_jax_fields(torch_model: TorchModel, schema: FeatureSchema) -> np.ndarray:
  """Index ``k`` of TorchRec's stacking ``[dense, features...]`` -> jaxrec's stacking index."""
  names = [n for n, _ in _feature_tables(torch_model)]
  ours = [f.name for f in schema.sparse]
  if sorted(names) != sorted(ours):
    raise ValueError(f'TorchRec features {sorted(names)} differ from the schema fields '
                     f'{sorted(ours)}')
  position = {n: i for i, n in enumerate(ours)}
  return np.array([len(ours)] + [position[n] for n in names])


def _dlrm_top_permutation(t2j: np.ndarray, dim: int) -> np.ndarray:
  """``perm[c]``: the jaxrec top-MLP input column of TorchRec over-arch input column ``c``.

  TorchRec: ``[dense_emb (dim), pairs of its stacking]``; jaxrec: ``[pairs of its stacking,
  dense_emb (dim)]``, both with row-major upper-triangle pairs.
  """
  n = len(t2j)
  rows, cols = pair_indices(n)
  jax_pair = {(int(a), int(b)): k for k, (a, b) in enumerate(zip(rows, cols))}
  num_pairs = len(rows)
  perm = [num_pairs + i for i in range(dim)]
  for a, b in zip(*pair_indices(n)):
    i, j = sorted((int(t2j[a]), int(t2j[b])))
    perm.append(jax_pair[(i, j)])
  return np.array(perm)


def _block_permutation(t2j: np.ndarray, dim: int) -> np.ndarray:
  """``perm[c]``: jaxrec column of TorchRec column ``c`` of the flattened ``[fields, dim]``."""
  return (t2j[:, None] * dim + np.arange(dim)[None, :]).reshape(-1)


# ---------------------------------------------------------------------------------------------
# Parameters.


def _np(t: torch.Tensor) -> np.ndarray:
  return t.detach().cpu().numpy().astype(np.float32)


def _linear_map(torch_model: TorchModel, jax_model: JaxModel
                ) -> list[tuple[torch.nn.Linear, tuple[str, ...]]]:
  """(torch Linear, jaxrec layer path) for every MLP layer."""
  bottom = _linears(torch_model.dense_arch.model)
  mlp, last = torch_model.over_arch.model
  over = _linears(mlp)
  hidden, out = (('stacked_dnn',), ('fc',)) if isinstance(jax_model, DLRMDCN) else (
      ('top_mlp',), ('top_mlp',))
  pairs = [(lin, ('bottom_mlp', f'dense_{i}')) for i, lin in enumerate(bottom[:-1])]
  pairs.append((bottom[-1], ('bottom_mlp', 'output')))
  pairs += [(lin, hidden + (f'dense_{i}',)) for i, lin in enumerate(over)]
  pairs.append((last, out + ('output',)))
  return pairs


def _input_permutation(torch_model: TorchModel, jax_model: JaxModel) -> np.ndarray:
  t2j = _torch_to_jax_fields(torch_model, jax_model.schema)
  if isinstance(jax_model, DLRMDCN):
    return _block_permutation(t2j, jax_model.embedding_dim)
  return _dlrm_top_permutation(t2j, jax_model.embedding_dim)


def _check_pair(torch_model: TorchModel, jax_model: JaxModel) -> None:
  _check_convertible(jax_model)
  want = TorchDLRMDCN if isinstance(jax_model, DLRMDCN) else TorchDLRM
  if type(torch_model) is not want:  # pylint: disable=unidiomatic-typecheck
    raise TypeError(f'jaxrec {type(jax_model).__name__} pairs with torchrec {want.__name__}, '
                    f'got {type(torch_model).__name__}')


def params_from_torchrec(torch_model: TorchModel, jax_model: JaxModel) -> PyTree:
  """jaxrec parameters equal to ``torch_model``'s weights (float32 numpy arrays).

  Raises:
    ValueError / TypeError: the two architectures differ (the message names the parameter).
  """
  _check_pair(torch_model, jax_model)
  expected = expected_shapes(jax_model)
  perm = _input_permutation(torch_model, jax_model)
  first_over = _linear_map(torch_model, jax_model)[len(_linears(torch_model.dense_arch.model))][1]
  flat = {}
  for name, config in _feature_tables(torch_model):
    flat[('embedding', name)] = _np(_ebc(torch_model).embedding_bags[config.name].weight)
  for lin, path in _linear_map(torch_model, jax_model):
    kernel = _np(lin.weight).T  # [in, out]
    if path == first_over:
      permuted = np.empty_like(kernel)
      permuted[perm] = kernel
      kernel = permuted
    flat[path + ('kernel',)] = kernel
    flat[path + ('bias',)] = _np(lin.bias)
  if isinstance(jax_model, DLRMDCN):
    cross = torch_model.inter_arch.crossnet
    for i in range(jax_model.num_cross_layers):
      v, u, b = (np.empty_like(a) for a in (
          _np(cross.V_kernels[i]).T, _np(cross.W_kernels[i]).T, _np(cross.bias[i])))
      v[perm] = _np(cross.V_kernels[i]).T  # [D, r]
      u[:, perm] = _np(cross.W_kernels[i]).T  # [r, D]
      b[perm] = _np(cross.bias[i])
      base = ('crossnet', f'cross_{i}')
      flat.update({base + ('V',): v, base + ('U',): u, base + ('bias',): b})
  check_shapes(flat, expected, type(jax_model).__name__)
  return traverse_util.unflatten_dict(flat)


def params_to_torchrec(params: PyTree, jax_model: JaxModel, torch_model: TorchModel) -> None:
  """Copies jaxrec ``params`` into ``torch_model``'s weights in place (the inverse map)."""
  _check_pair(torch_model, jax_model)
  flat = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(params).items()}
  check_shapes(flat, expected_shapes(jax_model), type(jax_model).__name__)
  perm = _input_permutation(torch_model, jax_model)
  first_over = _linear_map(torch_model, jax_model)[len(_linears(torch_model.dense_arch.model))][1]

  def put(target: torch.Tensor, value: np.ndarray, what: str) -> None:
    if tuple(target.shape) != value.shape:
      raise ValueError(f'{what}: TorchRec shape {tuple(target.shape)} != {value.shape}')
    with torch.no_grad():
      target.copy_(torch.from_numpy(np.ascontiguousarray(value)))

  for name, config in _feature_tables(torch_model):
    put(_ebc(torch_model).embedding_bags[config.name].weight, flat[('embedding', name)],
        f'embedding/{name}')
  for lin, path in _linear_map(torch_model, jax_model):
    kernel = flat[path + ('kernel',)]
    if path == first_over:
      kernel = kernel[perm]
    put(lin.weight, kernel.T, '/'.join(path))
    put(lin.bias, flat[path + ('bias',)], '/'.join(path))
  if isinstance(jax_model, DLRMDCN):
    cross = torch_model.inter_arch.crossnet
    for i in range(jax_model.num_cross_layers):
      base = ('crossnet', f'cross_{i}')
      put(cross.V_kernels[i], flat[base + ('V',)][perm].T, f'crossnet/cross_{i}/V')
      put(cross.W_kernels[i], flat[base + ('U',)][:, perm].T, f'crossnet/cross_{i}/U')
      put(cross.bias[i], flat[base + ('bias',)][perm], f'crossnet/cross_{i}/bias')


def from_torchrec(torch_model: TorchModel, schema: Optional[FeatureSchema] = None
                  ) -> tuple[JaxModel, PyTree]:
  """``(jaxrec model, params)`` equal to a TorchRec ``DLRM`` or ``DLRM_DCN``."""
  jax_model = jaxrec_model_like(torch_model, schema)
  return jax_model, params_from_torchrec(torch_model, jax_model)


def to_torchrec(jax_model: JaxModel, params: PyTree) -> TorchModel:
  """A TorchRec ``DLRM`` / ``DLRM_DCN`` holding jaxrec ``params``."""
  torch_model = torchrec_model_like(jax_model)
  params_to_torchrec(params, jax_model, torch_model)
  return torch_model
