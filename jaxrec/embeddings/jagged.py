"""``KeyedJagged``: per-feature bags of ids (TorchRec's KeyedJaggedTensor) in a padded layout.

TorchRec's KJT stores, feature by feature, the concatenated ids of every sample's bag (``values``)
with the bag sizes (``lengths``, or their running sums ``offsets``). jit needs static shapes, so
``KeyedJagged`` keeps every bag padded to one length ``L``:

  * ``ids``      ``int32   [B, F, L]``: bag ``(b, f)`` is ``ids[b, f, :lengths[b, f]]``; the padding
    slots hold 0 and are never read;
  * ``lengths``  ``int32   [B, F]``: valid ids per bag (0 is an empty bag);
  * ``weights``  ``float32 [B, F, L]``: per-sample weights (1 where a table is unweighted).

``L`` is the longest bag allowed (1 for one-hot data). The jagged form converts both ways
(``from_lengths`` / ``from_offsets`` / ``to_jagged``) and ``from_batch`` builds the padded form
straight from the data pipeline's batch dict (``sparse`` one-hot columns and the ``multi_hot_*``
arrays), keyed by the schema's field names.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.struct
import jax.numpy as jnp
import numpy as np

from jaxrec.data.schema import FeatureSchema


@flax.struct.dataclass
class KeyedJagged:
  """Padded per-feature bags; a pytree whose ``keys`` are static (see the module docstring).

  Attributes:
    keys: feature names, one per ``F`` column.
    ids: ``int32 [B, F, L]``.
    lengths: ``int32 [B, F]``.
    weights: ``float32 [B, F, L]``.
  """
  ids: jnp.ndarray
  lengths: jnp.ndarray
  weights: jnp.ndarray
  keys: tuple[str, ...] = flax.struct.field(pytree_node=False, default=())

  @property
  def batch_size(self) -> int:
    return self.ids.shape[0]

  @property
  def max_length(self) -> int:
    return self.ids.shape[2]

  def index(self, feature: str) -> int:
    """Column of ``feature``; KeyError naming it and the known features if absent."""
    try:
      return self.keys.index(feature)
    except ValueError:
      raise KeyError(f'feature {feature!r} is not in the batch; it has {list(self.keys)}') from None

  def mask(self) -> jnp.ndarray:
    """``bool [B, F, L]``: the valid (non-padding) slots."""
    return jnp.arange(self.max_length)[None, None, :] < self.lengths[:, :, None]

  @classmethod
  def from_lengths(cls, keys: Sequence[str], values, lengths, max_length: int,
                   weights=None) -> 'KeyedJagged':
    """From TorchRec's jagged layout (on the host).

    Args:
      keys: the ``F`` feature names.
      values: ``[N]`` ids, feature-major then sample-major (TorchRec order).
      lengths: ``[F * B]`` bag sizes in the same order.
      max_length: ``L`` of the padded layout.
      weights: optional ``[N]`` per-sample weights (default 1).

    Raises:
      ValueError: naming the feature, for lengths that do not match ``values`` or a bag longer
        than ``max_length``.
    """
    keys = tuple(keys)
    values = np.asarray(values)
    lengths = np.asarray(lengths, np.int64)
    f = len(keys)
    if f == 0 or lengths.ndim != 1 or lengths.size % f:
      raise ValueError(f'lengths of shape {lengths.shape} do not split into {f} features {keys}')
    if (lengths < 0).any():
      raise ValueError('lengths must be >= 0')
    if lengths.sum() != values.size:
      raise ValueError(f'lengths sum to {lengths.sum()} but there are {values.size} values')
    b = lengths.size // f
    w = np.ones(values.shape, np.float32) if weights is None else np.asarray(weights, np.float32)
    if w.shape != values.shape:
      raise ValueError(f'weights of shape {w.shape} do not match values {values.shape}')
    lens = lengths.reshape(f, b)
    too_long = np.argwhere(lens > max_length)
    if too_long.size:
      fi, bi = too_long[0]
      raise ValueError(f'feature {keys[fi]!r}: sample {bi} has a bag of {lens[fi, bi]} ids, more '
                       f'than max_length={max_length}')
    ids = np.zeros((f, b, max_length), np.int32)
    wts = np.zeros((f, b, max_length), np.float32)
    pos = np.arange(max_length)[None, None, :] < lens[:, :, None]
    ids[pos] = values
    wts[pos] = w
    return cls(ids=jnp.asarray(ids.transpose(1, 0, 2)), lengths=jnp.asarray(lens.T, jnp.int32),
               weights=jnp.asarray(wts.transpose(1, 0, 2)), keys=keys)

  @classmethod
  def from_offsets(cls, keys: Sequence[str], values, offsets, max_length: int,
                   weights=None) -> 'KeyedJagged':
    """As ``from_lengths`` with ``offsets`` ``[F * B + 1]`` (running sums of the lengths)."""
    offsets = np.asarray(offsets, np.int64)
    if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 or (np.diff(offsets) < 0).any():
      raise ValueError('offsets must start at 0 and not decrease')
    return cls.from_lengths(keys, values, np.diff(offsets), max_length, weights)

  def to_jagged(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values [N], lengths [F * B], weights [N])`` in TorchRec order (on the host)."""
    ids = np.asarray(self.ids).transpose(1, 0, 2)
    w = np.asarray(self.weights).transpose(1, 0, 2)
    lens = np.asarray(self.lengths).T
    pos = np.arange(self.max_length)[None, None, :] < lens[:, :, None]
    return ids[pos], lens.reshape(-1).astype(np.int32), w[pos]

  def offsets(self) -> np.ndarray:
    """``[F * B + 1]`` running sums of the lengths (TorchRec order)."""
    return np.concatenate([[0], np.cumsum(np.asarray(self.lengths).T.reshape(-1))])

  @classmethod
  def from_batch(cls, batch: dict, schema: FeatureSchema,
                 max_length: Optional[int] = None) -> 'KeyedJagged':
    """From the data pipeline's batch dict, one feature per sparse field in schema order.

    One-hot fields become bags of one id with weight 1; multi-hot fields take
    ``multi_hot_ids[:, m, :]``, ``multi_hot_lengths[:, m]`` and ``multi_hot_weights`` (default 1).
    Works on host arrays and inside jit. ``max_length`` defaults to the schema's longest bag.
    """
    length = max(1, schema.max_multi_hot_length) if max_length is None else max_length
    if length < max(1, schema.max_multi_hot_length):
      raise ValueError(f'max_length={length} is shorter than the schema\'s longest multi-hot '
                       f'field ({schema.max_multi_hot_length})')
    if 'sparse' not in batch and schema.num_sparse:
      raise KeyError("batch has no 'sparse' ids but the schema has one-hot fields")
    ids, lens, wts = [], [], []
    oh = mh = 0
    for field in schema.sparse:
      if not field.multi_hot:
        col = jnp.asarray(batch['sparse'])[:, oh].astype(jnp.int32)  # [B]
        b = col.shape[0]
        ids.append(jnp.pad(col[:, None], ((0, 0), (0, length - 1))))
        lens.append(jnp.ones((b,), jnp.int32))
        wts.append(jnp.pad(jnp.ones((b, 1), jnp.float32), ((0, 0), (0, length - 1))))
        oh += 1
      else:
        n = field.max_length
        mids = jnp.asarray(batch['multi_hot_ids'])[:, mh, :n].astype(jnp.int32)  # [B, n]
        b = mids.shape[0]
        if 'multi_hot_weights' in batch:
          mw = jnp.asarray(batch['multi_hot_weights'])[:, mh, :n].astype(jnp.float32)
        else:
          mw = jnp.ones((b, n), jnp.float32)
        # Lengths are kept as given (FieldEmbedding's 'mean' divides by them unclipped).
        lens.append(jnp.asarray(batch['multi_hot_lengths'])[:, mh].astype(jnp.int32))
        ids.append(jnp.pad(mids, ((0, 0), (0, length - n))))
        wts.append(jnp.pad(mw, ((0, 0), (0, length - n))))
        mh += 1
    return cls(ids=jnp.stack(ids, 1), lengths=jnp.stack(lens, 1), weights=jnp.stack(wts, 1),
               keys=tuple(f.name for f in schema.sparse))
