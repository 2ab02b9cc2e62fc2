"""Table and feature configuration in the spirit of TorchRec's ``EmbeddingBagConfig``.

A table has ``num_embeddings`` rows of ``embedding_dim`` columns and serves one or more features
(several features may share a table, as in TorchRec). Each feature's bag is pooled with the
table's ``pooling`` ('sum' or 'mean'); ``weighted`` tables multiply every looked-up row by its
per-sample weight before pooling.

Example::

  tables = (EmbeddingBagConfig('user', 1000, 16, ('user_id',)),
            EmbeddingBagConfig('item', 5000, 16, ('item_id', 'history'), pooling='mean',
                               weighted=True))
  validate_configs(tables)
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from jaxrec.data.schema import FeatureSchema

POOLINGS = ('sum', 'mean')


@dataclasses.dataclass(frozen=True)
class EmbeddingBagConfig:
  """One embedding table and the features it serves.

  Attributes:
    name: table name (the parameter's name).
    num_embeddings: rows of the table (valid ids are ``[0, num_embeddings)``).
    embedding_dim: columns ``d``.
    feature_names: the features looked up in this table (at least one).
    pooling: 'sum' or 'mean' (mean divides the weighted sum by the bag length; an empty bag
      pools to zeros).
    weighted: whether bags carry per-sample weights (else every valid id has weight 1).
  """
  name: str
  num_embeddings: int
  embedding_dim: int
  feature_names: tuple[str, ...]
  pooling: str = 'sum'
  weighted: bool = False

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f'embedding table name must be a non-empty string, got {self.name!r}')
    for attr in ('num_embeddings', 'embedding_dim'):
      v = getattr(self, attr)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f'table {self.name!r}: {attr} must be a positive int, got {v!r}')
    if isinstance(self.feature_names, str):
      raise ValueError(f'table {self.name!r}: feature_names must be a sequence of names, not the '
                       f'string {self.feature_names!r}')
    object.__setattr__(self, 'feature_names', tuple(self.feature_names))
    if not self.feature_names:
      raise ValueError(f'table {self.name!r}: feature_names is empty; a table needs a feature')
    dup = sorted({f for f in self.feature_names if self.feature_names.count(f) > 1})
    if dup:
      raise ValueError(f'table {self.name!r}: duplicate feature names {dup}')
    if self.pooling not in POOLINGS:
      raise ValueError(f'table {self.name!r}: pooling must be one of {POOLINGS}, got '
                       f'{self.pooling!r}')

  @property
  def num_bytes(self) -> int:
    """float32 bytes of the table."""
    return 4 * self.num_embeddings * self.embedding_dim


def validate_configs(tables: Sequence[EmbeddingBagConfig]) -> tuple[EmbeddingBagConfig, ...]:
  """Checks that table names are unique and that each feature is served by one table.

  Returns:
    the tables as a tuple.

  Raises:
    ValueError: naming the duplicate table or the feature claimed by two tables.
  """
  tables = tuple(tables)
  if not tables:
    raise ValueError('no embedding tables given')
  seen_tables, owner = set(), {}
  for t in tables:
    if not isinstance(t, EmbeddingBagConfig):
      raise TypeError(f'expected EmbeddingBagConfig, got {type(t).__name__}: {t!r}')
    if t.name in seen_tables:
      raise ValueError(f'duplicate embedding table name {t.name!r}')
    seen_tables.add(t.name)
    for f in t.feature_names:
      if f in owner:
        raise ValueError(f'feature {f!r} is served by two tables: {owner[f]!r} and {t.name!r}')
      owner[f] = t.name
  return tables


def feature_names(tables: Sequence[EmbeddingBagConfig]) -> tuple[str, ...]:
  """All features of ``tables``, table by table, in order."""
  return tuple(f for t in tables for f in t.feature_names)


def configs_from_schema(schema: FeatureSchema, dim: int) -> tuple[EmbeddingBagConfig, ...]:
  """One weighted table per sparse field of ``schema``, named after it (FieldEmbedding's layout).

  One-hot fields pool with 'sum' (a bag of one id); multi-hot fields keep their schema pooling.
  """
  return validate_configs(
      EmbeddingBagConfig(f.name, f.vocab_size, dim, (f.name,),
                         pooling=f.pooling if f.multi_hot else 'sum', weighted=f.multi_hot)
      for f in schema.sparse)
