"""Vocabularies: raw categorical values (strings) -> contiguous integer ids.

A :class:`Vocabulary` is fit on the training split only. Id 0 is reserved for out-of-vocabulary
values (unseen in training, or rarer than ``min_count`` there); the kept tokens get ids
``1..len(tokens)`` in order of decreasing training count, ties broken by the token string, so
the ids do not depend on the row order. A missing value (the empty string) is an ordinary token.

FuxiCTR orders its vocabularies the same way (most frequent first) but reserves two ids
(``__PAD__`` = 0 and ``__OOV__`` = last); jaxrec reserves one, so its tables are one row smaller.

Example::

  vocab = Vocabulary.fit(np.array(['a', 'b', 'a', '']), min_count=1)
  vocab.lookup(np.array(['a', 'zzz']))   # array([1, 0], dtype=int32)
  Vocabulary.from_dict(vocab.to_dict()) == vocab
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import numpy as np

OOV_ID = 0

ArrayLike = Union[np.ndarray, Sequence[str]]


def _as_str_array(values: ArrayLike) -> np.ndarray:
  a = np.asarray(values)
  if a.dtype.kind != 'U':
    a = a.astype(str)
  return a


@dataclasses.dataclass(frozen=True, eq=False)
class Vocabulary:
  """Token -> id map with a reserved out-of-vocabulary id 0.

  Attributes:
    tokens: the kept tokens; ``tokens[i]`` has id ``i + 1``.
    min_count: the training count a token needed to be kept (recorded for the state).
  """
  tokens: tuple[str, ...]
  min_count: int = 1

  def __post_init__(self):
    object.__setattr__(self, 'tokens', tuple(str(t) for t in self.tokens))
    if len(set(self.tokens)) != len(self.tokens):
      raise ValueError('vocabulary tokens must be unique')
    order = np.argsort(np.asarray(self.tokens, dtype=str), kind='stable')
    sorted_tokens = np.asarray(self.tokens, dtype=str)[order] if self.tokens else np.zeros(0, 'U1')
    object.__setattr__(self, '_sorted', sorted_tokens)
    object.__setattr__(self, '_sorted_ids', (order + 1).astype(np.int32))

  @classmethod
  def fit(cls, values: ArrayLike, min_count: int = 1) -> 'Vocabulary':
    """Builds a vocabulary of the tokens occurring at least ``min_count`` times in ``values``."""
    if min_count < 1:
      raise ValueError(f'min_count must be >= 1, got {min_count}')
    uniq, counts = np.unique(_as_str_array(values).reshape(-1), return_counts=True)
    order = np.argsort(-counts, kind='stable')  # uniq is sorted, so ties keep token order
    keep = order[counts[order] >= min_count]
    return cls(tuple(uniq[keep].tolist()), min_count)

  @property
  def size(self) -> int:
    """Number of ids, the OOV id included: the embedding table's ``vocab_size``."""
    return len(self.tokens) + 1

  def __len__(self) -> int:
    return self.size

  def __repr__(self) -> str:
    head = ', '.join(repr(t) for t in self.tokens[:5]) + (', ...' if len(self.tokens) > 5 else '')
    return f'Vocabulary(size={self.size}, min_count={self.min_count}, tokens=({head}))'

  def __eq__(self, other) -> bool:
    return isinstance(other, Vocabulary) and self.tokens == other.tokens and (
        self.min_count == other.min_count)

  def lookup(self, values: ArrayLike) -> np.ndarray:
    """ids (int32, same shape as ``values``); OOV_ID for tokens not in the vocabulary."""
    a = _as_str_array(values)
    if not self.tokens or a.size == 0:
      return np.full(a.shape, OOV_ID, np.int32)
    pos = np.searchsorted(self._sorted, a)
    pos = np.minimum(pos, len(self._sorted) - 1)
    found = self._sorted[pos] == a
    return np.where(found, self._sorted_ids[pos], OOV_ID).astype(np.int32)

  def to_dict(self) -> dict:
    return {'tokens': list(self.tokens), 'min_count': self.min_count}

  @classmethod
  def from_dict(cls, d: dict) -> 'Vocabulary':
    return cls(tuple(d['tokens']), int(d.get('min_count', 1)))
