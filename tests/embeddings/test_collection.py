"""Configs, the KeyedJagged batch and the unsharded collections."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.schema import FeatureSchema, SparseField
from jaxrec.embeddings import (EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingCollection,
                               KeyedJagged, configs_from_schema, validate_configs)
from jaxrec.embeddings.collection import stack_features
from jaxrec.layers.embedding import FieldEmbedding


def test_config_validation_names_the_table():
  with pytest.raises(ValueError, match="table 't': num_embeddings"):
    EmbeddingBagConfig('t', 0, 4, ('a',))
  with pytest.raises(ValueError, match="table 't': pooling"):
    EmbeddingBagConfig('t', 3, 4, ('a',), pooling='max')
  with pytest.raises(ValueError, match="table 't': feature_names is empty"):
    EmbeddingBagConfig('t', 3, 4, ())
  with pytest.raises(ValueError, match="table 't': feature_names must be a sequence"):
    EmbeddingBagConfig('t', 3, 4, 'a')
  with pytest.raises(ValueError, match="feature 'a' is served by two tables: 't' and 'u'"):
    validate_configs([EmbeddingBagConfig('t', 3, 4, ('a',)), EmbeddingBagConfig('u', 3, 4, ('a',))])
  with pytest.raises(ValueError, match="duplicate embedding table name 't'"):
    validate_configs([EmbeddingBagConfig('t', 3, 4, ('a',)), EmbeddingBagConfig('t', 3, 4, ('b',))])


def test_jagged_round_trip_and_padding():
  values, lengths = np.array([1, 2, 3, 4, 5, 6]), np.array([2, 0, 1, 3])  # features a, b; B = 2
  w = np.arange(6, dtype=np.float32)
  kjt = KeyedJagged.from_lengths(('a', 'b'), values, lengths, max_length=3, weights=w)
  assert kjt.ids.shape == (2, 2, 3)
  np.testing.assert_array_equal(kjt.ids[:, 0], [[1, 2, 0], [0, 0, 0]])  # a: [1 2], []
  np.testing.assert_array_equal(kjt.ids[:, 1], [[3, 0, 0], [4, 5, 6]])  # b: [3], [4 5 6]
  np.testing.assert_array_equal(kjt.lengths, [[2, 1], [0, 3]])
  v, l, ww = kjt.to_jagged()
  np.testing.assert_array_equal(v, values)
  np.testing.assert_array_equal(l, lengths)
  np.testing.assert_array_equal(ww, w)
  again = KeyedJagged.from_offsets(('a', 'b'), values, kjt.offsets(), 3, w)
  np.testing.assert_array_equal(again.ids, kjt.ids)
  with pytest.raises(ValueError, match="feature 'b': sample 1 has a bag of 3 ids"):
    KeyedJagged.from_lengths(('a', 'b'), values, lengths, max_length=2)
  with pytest.raises(KeyError, match="feature 'c' is not in the batch"):
    kjt.index('c')
  # A pytree with static keys: goes through jit.
  out = jax.jit(lambda k: k.ids.sum() + k.lengths.sum())(kjt)
  assert int(out) == 21 + 6


def _mixed_schema():
  return FeatureSchema((SparseField('u', 7), SparseField('hist', 11, max_length=4, pooling='mean'),
                        SparseField('i', 5), SparseField('tags', 9, max_length=3, pooling='sum')))


def _mixed_batch(rng, b=6):
  return {'sparse': rng.integers(0, 5, size=(b, 2)).astype(np.int32),
          'multi_hot_ids': rng.integers(0, 9, size=(b, 2, 4)).astype(np.int32),
          'multi_hot_lengths': rng.integers(0, 5, size=(b, 2)).astype(np.int32),
          'multi_hot_weights': rng.normal(size=(b, 2, 4)).astype(np.float32)}


def test_from_batch_and_collection_equal_field_embedding():
  """The collection built from a schema computes FieldEmbedding's outputs from its params."""
  schema, rng = _mixed_schema(), np.random.default_rng(0)
  batch = _mixed_batch(rng)
  kjt = KeyedJagged.from_batch(batch, schema)
  assert kjt.keys == ('u', 'hist', 'i', 'tags') and kjt.ids.shape == (6, 4, 4)
  fe = FieldEmbedding(schema, 3, embedding_init=jax.nn.initializers.normal(1.0))
  variables = fe.init(jax.random.key(0), batch)
  tables = configs_from_schema(schema, 3)
  ebc = EmbeddingBagCollection(tables)
  ebc_vars = ebc.init(jax.random.key(1), kjt)
  assert jax.tree.map(jnp.shape, ebc_vars) == jax.tree.map(jnp.shape, variables)
  assert (jax.tree.map(lambda x: x.names, ebc_vars['params'],
                       is_leaf=lambda x: hasattr(x, 'names'))
          == {f.name: ('vocab', 'embed') for f in schema.sparse})
  out = stack_features(ebc.apply(variables, kjt), kjt.keys)
  np.testing.assert_allclose(out, fe.apply(variables, batch), rtol=1e-6, atol=1e-6)


def test_sequence_lookup_and_id_check():
  tables = (EmbeddingBagConfig('t', 5, 2, ('a',)),)
  kjt = KeyedJagged.from_lengths(('a',), [4, 1, 7, 2], [3, 1], max_length=3)
  params = {'params': {'t': jnp.arange(10.0).reshape(5, 2) + 1}}
  seq = EmbeddingCollection(tables).apply(params, kjt)['a']  # [2, 3, 2]
  np.testing.assert_array_equal(seq[0], [[9, 10], [3, 4], [0, 0]])  # id 7 is out of range: zeros
  np.testing.assert_array_equal(seq[1], [[5, 6], [0, 0], [0, 0]])
  pooled = EmbeddingBagCollection(tables).apply(params, kjt)['a']
  np.testing.assert_array_equal(pooled, [[12, 14], [5, 6]])
  with pytest.raises(ValueError, match="table 't', feature 'a': sample 0 has id 7 outside"):
    EmbeddingBagCollection(tables, id_check='error').apply(params, kjt)
  with pytest.raises(Exception, match="table 't', feature 'a': sample 0 has id 7 outside"):
    f = jax.jit(lambda p, k: EmbeddingBagCollection(tables, id_check='error').apply(p, k))
    jax.block_until_ready(f(params, kjt))


def test_field_embedding_gives_zero_rows_for_ids_outside_the_table():
  schema = FeatureSchema((SparseField('u', 4), SparseField('h', 3, max_length=2, pooling='sum')))
  batch = {'sparse': np.array([[1], [9]], np.int32),
           'multi_hot_ids': np.array([[[2, 7]], [[-1, 1]]], np.int32),
           'multi_hot_lengths': np.array([[2], [2]], np.int32),
           'multi_hot_weights': np.ones((2, 1, 2), np.float32)}
  fe = FieldEmbedding(schema, 2)
  params = {'params': {'u': jnp.arange(8.0).reshape(4, 2) + 1, 'h': jnp.arange(6.0).reshape(3, 2)}}
  out = fe.apply(params, batch)
  np.testing.assert_array_equal(out[:, 0], [[3, 4], [0, 0]])
  np.testing.assert_array_equal(out[:, 1], [[4, 5], [2, 3]])
