"""Top-N similar-user retrieval against a brute-force numpy reference, and the LM retriever."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.retrieval import retriever as rt

U, I, D = 12, 7, 4


@pytest.fixture(scope='module')
def corpus():
  rng = np.random.default_rng(0)
  ratings = (rng.random((U, I)) < 0.4) * rng.integers(1, 6, (U, I))
  ratings[:, 5] = 0
  ratings[3, 5] = 4  # item 5: only user 3 rated it
  ratings[:, 6] = 0  # item 6: nobody
  node = rng.normal(size=(U + I, D)).astype(np.float32)
  return ratings.astype(np.int8), node


def _brute(user_emb, item_emb, ratings, u, i, n):
  """Numpy reference of the module docstring's rule."""
  raters = [v for v in range(U) if ratings[v, i] and v != u]
  if not raters:
    rated = [j for j in range(I) if j != i and ratings[:, j].any()]
    i = max(rated, key=lambda j: item_emb[i] @ item_emb[j])
    raters = [v for v in range(U) if ratings[v, i] and v != u]
  sims = user_emb[u] @ user_emb.T
  top = sorted(raters, key=lambda v: -sims[v])[:n]
  return i, top, [float(ratings[v, i]) for v in top]


def test_gcn_retriever_matches_brute_force(corpus):
  ratings, node = corpus
  r = rt.GCNRetriever.from_embeddings(node, U, ratings)
  users = np.array([0, 3, 5, 7, 11, 2])
  items = np.array([0, 5, 5, 6, 2, 1])
  ev = r.retrieve(users, items, 3)
  ue, ie = np.asarray(r.index.user_emb), np.asarray(r.index.item_emb)
  for q, (u, i) in enumerate(zip(users, items)):
    item, top, rates = _brute(ue, ie, ratings, u, i, 3)
    assert ev.item[q] == item
    k = len(top)
    assert ev.users[q, :k].tolist() == top and (ev.users[q, k:] == -1).all()
    assert ev.ratings_of(q) == rates and ev.valid[q].sum() == k
    np.testing.assert_allclose(ev.scores[q, :k], [ue[u] @ ue[v] for v in top], rtol=1e-5)
  assert ev.item[1] != 5  # user 3 is item 5's only rater: a neighbour stands in
  assert 3 in ev.users[2]  # ... but user 5 does get user 3's rating of item 5
  assert ev.item[3] != 6  # nobody rated item 6


def test_batched_concatenates(corpus):
  ratings, node = corpus
  r = rt.GCNRetriever.from_embeddings(node, U, ratings)
  users, items = np.arange(U), np.arange(U) % I
  whole = r.retrieve(users, items, 2)
  parts = rt.batched(lambda u, i: r.retrieve(u, i, 2), users, items, batch_size=5)
  for f in dataclasses.fields(rt.Evidence):
    np.testing.assert_array_equal(getattr(parts, f.name), getattr(whole, f.name))
  assert rt.time_per_query(lambda u, i: r.retrieve(u, i, 2), users, items, 4, repeats=1) > 0


def test_index_rejects_mismatched_shapes(corpus):
  ratings, node = corpus
  with pytest.raises(ValueError, match='do not match'):
    rt.Index(jnp.asarray(node[:U - 1]), jnp.asarray(node[U:]), jnp.asarray(ratings))


def test_lm_retriever_encodes_the_query_history(corpus):
  tokenizers = pytest.importorskip('tokenizers', reason='needs tokenizers (extra dependency)')
  from tokenizers import models, pre_tokenizers, processors
  from jaxrec.layers.bert import BertConfig, BertEncoder
  from jaxrec.retrieval.lm_retriever import LMRetriever, TextEncoder
  vocab = {w: i for i, w in enumerate(
      ['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'a', 'b', 'c', 'd', 'e', 'f', '1', '2', '3', ';'])}
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(
      single='[CLS] $A [SEP]', special_tokens=[('[CLS]', 2), ('[SEP]', 3)])
  config = BertConfig(vocab_size=len(vocab), hidden_size=8, num_layers=1, num_heads=2,
                      intermediate_size=8, max_position=16, dropout_rate=0.0)
  ids = jnp.zeros((1, 4), jnp.int32)
  params = jax.jit(BertEncoder(config).init)(jax.random.PRNGKey(0), ids, ids + 1)['params']
  encoder = TextEncoder(config, params, tok, max_length=8)
  ratings, _ = corpus
  letters = 'abcdef'
  users = [f'{letters[u % 6]} {u % 3 + 1} ; {letters[(u + 2) % 6]} 2' for u in range(U)]
  items = [letters[i % 6] for i in range(I)]
  r = LMRetriever.build(encoder, users, items, ratings, item_max_length=4)
  emb = encoder(users)
  np.testing.assert_allclose(jnp.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
  q_users, q_items = np.array([1, 4, 9]), np.array([0, 2, 3])
  live = r.retrieve(q_users, q_items, 3)
  cached = r.retrieve_cached(q_users, q_items, 3)
  np.testing.assert_array_equal(live.users, cached.users)
  np.testing.assert_allclose(live.scores, cached.scores, atol=1e-5)
  ue, ie = np.asarray(r.index.user_emb), np.asarray(r.index.item_emb)
  for q, (u, i) in enumerate(zip(q_users, q_items)):
    _, top, _ = _brute(ue, ie, ratings, u, i, 3)
    assert live.users[q, :len(top)].tolist() == top
