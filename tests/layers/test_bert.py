"""The Flax BERT encoder: pretrained all-MiniLM-L6-v2 against an independent reference, logical
axis names, padding invariance, weight-conversion errors."""

import dataclasses
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.layers import bert

REFERENCE = pathlib.Path(__file__).parent / 'data' / 'minilm_reference.npz'
TINY = bert.BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=4,
                       intermediate_size=32, max_position=16, dropout_rate=0.0)


@pytest.fixture(scope='module')
def minilm():
  pytest.importorskip('safetensors', reason='needs safetensors (extra dependency)')
  pytest.importorskip('tokenizers', reason='needs tokenizers (extra dependency)')
  try:
    return bert.load_minilm()
  except FileNotFoundError as e:
    pytest.skip(str(e))


def test_minilm_matches_the_pytorch_reference(minilm):
  """Reference: scripts/make_bert_reference.py (transformers BertModel + sentence-transformers)."""
  config, params, tok = minilm
  ref = np.load(REFERENCE)
  batch = bert.tokenize(tok, [str(s) for s in ref['sentences']], int(ref['max_length']))
  np.testing.assert_array_equal(batch['input_ids'], ref['input_ids'])
  np.testing.assert_array_equal(batch['attention_mask'], ref['attention_mask'])
  hidden = jax.jit(bert.BertEncoder(config).apply)({'params': params}, batch['input_ids'],
                                                   batch['attention_mask'])
  assert hidden.shape == (7,) + batch['input_ids'].shape + (384,)
  means = bert.mean_pool(hidden, jnp.asarray(batch['attention_mask']))  # [7, N, 384]
  np.testing.assert_allclose(means, ref['layer_means'], atol=1e-4, rtol=0)
  emb = means[-1] / jnp.linalg.norm(means[-1], axis=-1, keepdims=True)
  np.testing.assert_allclose(emb, ref['embeddings'], atol=1e-4, rtol=0)


def test_config_from_the_package_json(minilm):
  config, _, _ = minilm
  assert (config.hidden_size, config.num_layers, config.num_heads,
          config.intermediate_size) == (384, 6, 12, 1536)


def test_params_carry_logical_axis_names():
  ids = jnp.zeros((1, 4), jnp.int32)
  boxed = jax.jit(bert.BertEncoder(TINY).init)(jax.random.PRNGKey(0), ids,
                                               jnp.ones_like(ids))['params']
  specs = nn.get_partition_spec(boxed)
  flat = {jax.tree_util.keystr(k): tuple(v) for k, v in jax.tree_util.tree_flatten_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]}
  assert flat["['embeddings']['word']"] == ('vocab', 'embed')
  assert flat["['embeddings']['position']"] == ('position', 'embed')
  assert flat["['layer_0']['query']['kernel']"] == ('embed', 'heads', 'kv')
  assert flat["['layer_1']['attention_out']['kernel']"] == ('heads', 'kv', 'embed')
  assert flat["['layer_1']['intermediate']['kernel']"] == ('embed', 'mlp')
  assert flat["['layer_1']['output']['kernel']"] == ('mlp', 'embed')
  assert flat["['layer_0']['output_norm']['scale']"] == ('embed',)
  values = jax.tree.leaves(nn.meta.unbox(boxed))
  for spec, value in zip(flat.values(), values):
    assert len(spec) == value.ndim


def test_padding_does_not_change_the_tokens_and_dropout_only_in_training():
  model = bert.BertEncoder(dataclasses.replace(TINY, dropout_rate=0.5))
  key = jax.random.PRNGKey(1)
  ids = jax.random.randint(key, (2, 9), 1, TINY.vocab_size)
  short_mask = jnp.ones((2, 5), jnp.int32)
  mask = jnp.concatenate([short_mask, jnp.zeros((2, 4), jnp.int32)], axis=1)
  params = jax.jit(model.init)(key, ids, mask)['params']
  apply = jax.jit(model.apply, static_argnames='train')
  short = apply({'params': params}, ids[:, :5], short_mask)
  long = apply({'params': params}, ids, mask)  # 4 padding tokens with arbitrary ids
  np.testing.assert_allclose(long[:, :, :5], short, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(bert.mean_pool(long[-1], mask), bert.mean_pool(short[-1],
                             short_mask), atol=1e-5, rtol=1e-5)
  again = apply({'params': params}, ids, mask)
  np.testing.assert_array_equal(long, again)
  train = apply({'params': params}, ids, mask, train=True, rngs={'dropout': key})
  assert not np.allclose(long[-1], train[-1])


def test_convert_names_the_missing_and_misshapen_tensor():
  ids = jnp.zeros((1, 4), jnp.int32)
  params = nn.meta.unbox(jax.jit(bert.BertEncoder(TINY).init)(jax.random.PRNGKey(0), ids,
                                                              jnp.ones_like(ids))['params'])
  D, H, K = TINY.hidden_size, TINY.num_heads, TINY.head_dim
  t = {'embeddings.word_embeddings.weight': params['embeddings']['word'],
       'embeddings.position_embeddings.weight': params['embeddings']['position'],
       'embeddings.token_type_embeddings.weight': params['embeddings']['token_type'],
       'embeddings.LayerNorm.weight': params['embeddings']['layer_norm']['scale'],
       'embeddings.LayerNorm.bias': params['embeddings']['layer_norm']['bias']}
  for i in range(TINY.num_layers):
    p, pre = params[f'layer_{i}'], f'encoder.layer.{i}.'
    for ours, theirs in (('query', 'attention.self.query'), ('key', 'attention.self.key'),
                         ('value', 'attention.self.value')):
      t[pre + theirs + '.weight'] = np.asarray(p[ours]['kernel']).reshape(D, D).T
      t[pre + theirs + '.bias'] = np.asarray(p[ours]['bias']).reshape(D)
    t[pre + 'attention.output.dense.weight'] = np.asarray(p['attention_out']['kernel']).reshape(
        D, D).T
    t[pre + 'attention.output.dense.bias'] = p['attention_out']['bias']
    t[pre + 'attention.output.LayerNorm.weight'] = p['attention_norm']['scale']
    t[pre + 'attention.output.LayerNorm.bias'] = p['attention_norm']['bias']
    t[pre + 'intermediate.dense.weight'] = np.asarray(p['intermediate']['kernel']).T
    t[pre + 'intermediate.dense.bias'] = p['intermediate']['bias']
    t[pre + 'output.dense.weight'] = np.asarray(p['output']['kernel']).T
    t[pre + 'output.dense.bias'] = p['output']['bias']
    t[pre + 'output.LayerNorm.weight'] = p['output_norm']['scale']
    t[pre + 'output.LayerNorm.bias'] = p['output_norm']['bias']
  back = bert.convert_hf_bert({'bert.' + k: v for k, v in t.items()}, TINY)  # round trip
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), back, params)
  missing = {k: v for k, v in t.items() if k != 'encoder.layer.1.output.dense.bias'}
  with pytest.raises(ValueError, match='encoder.layer.1.output.dense.bias'):
    bert.convert_hf_bert(missing, TINY, 'w.safetensors')
  bad = dict(t, **{'embeddings.LayerNorm.bias': np.zeros(3, np.float32)})
  with pytest.raises(ValueError,
                     match=r"w.safetensors: parameter \['embeddings'\]\['layer_norm'\]"):
    bert.convert_hf_bert(bad, TINY, 'w.safetensors')


def test_config_validation():
  with pytest.raises(ValueError, match='num_heads=5 does not divide hidden_size=16'):
    dataclasses.replace(TINY, num_heads=5)
  with pytest.raises(ValueError, match='num_layers'):
    dataclasses.replace(TINY, num_layers=0)


def test_sequence_longer_than_positions_is_rejected():
  ids = jnp.zeros((1, 17), jnp.int32)
  with pytest.raises(ValueError, match='exceeds max_position=16'):
    bert.BertEncoder(TINY).init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids))


def test_tokenize_truncates_with_a_final_sep(minilm):
  _, _, tok = minilm
  out = bert.tokenize(tok, ['one two three four five six seven', 'hi'], 5)
  assert out['input_ids'].shape == (2, 5)
  assert out['input_ids'][0, 0] == tok.token_to_id('[CLS]')
  assert out['input_ids'][0, -1] == tok.token_to_id('[SEP]')
  assert out['attention_mask'][1].tolist() == [1, 1, 1, 0, 0]
  with pytest.raises(TypeError, match=r'texts\[1\] is int'):
    bert.tokenize(tok, ['a', 3], 8)


def test_minilm_dir_from_the_environment(tmp_path, monkeypatch):
  """``$JAXREC_MINILM_DIR`` points at a copy of the model files; a missing one is named."""
  monkeypatch.setenv(bert.MINILM_DIR_ENV, str(tmp_path))
  for name in ('config.json', 'model.safetensors'):
    (tmp_path / name).write_text('{}')
  with pytest.raises(FileNotFoundError, match=r'tokenizer\.json not found \(\$JAXREC_MINILM_DIR\)'):
    bert.minilm_dir()
  (tmp_path / 'tokenizer.json').write_text('{}')
  assert bert.minilm_dir() == tmp_path
