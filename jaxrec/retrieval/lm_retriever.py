"""The LM-based retriever baseline: users and items embedded by a text encoder, cosine search.

A user's text is their corpus history (``"title rating; ..."``, most recent first); an item's
text is its ``"title (year), genres"``. Both are encoded with the pretrained sentence encoder
(mean pooling of the last layer, unit norm). At query time the query user's history is encoded
again (that is what makes a language-model retriever slow); the candidate users and items are
pre-encoded into the :class:`~jaxrec.retrieval.retriever.Index`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.layers.bert import BertConfig, BertEncoder, mean_pool, tokenize
from jaxrec.retrieval.retriever import Evidence, Index, normalize


@dataclasses.dataclass
class TextEncoder:
  """A jitted sentence encoder: texts -> unit embeddings ``[N, D]``.

  Attributes:
    config: the encoder's config; params: its (unboxed) params; tokenizer: a
      ``tokenizers.Tokenizer``; max_length: tokens per text (longer texts are truncated).
  """
  config: BertConfig
  params: dict
  tokenizer: object
  max_length: int = 128

  def __post_init__(self):
    enc = BertEncoder(self.config)

    def embed(params, ids, mask):
      return normalize(mean_pool(enc.apply({'params': params}, ids, mask)[-1], mask))

    self._embed = jax.jit(embed)

  def __call__(self, texts: Sequence[str], batch_size: int = 64,
               max_length: Optional[int] = None) -> jax.Array:
    """Unit embeddings ``[N, D]`` of ``texts`` (``max_length`` overrides the default)."""
    out = []
    for s in range(0, len(texts), batch_size):
      b = tokenize(self.tokenizer, texts[s:s + batch_size], max_length or self.max_length)
      out.append(self._embed(self.params, b['input_ids'], b['attention_mask']))
    return jnp.concatenate(out) if out else jnp.zeros((0, self.config.hidden_size))


@dataclasses.dataclass
class LMRetriever:
  """Similar users by text embeddings of their histories.

  Attributes:
    encoder: the text encoder.
    user_texts: the history text of every user (index order).
    index: the pre-encoded corpus.
  """
  encoder: TextEncoder
  user_texts: list[str]
  index: Index

  @classmethod
  def build(cls, encoder: TextEncoder, user_texts: Sequence[str], item_texts: Sequence[str],
            ratings: np.ndarray, item_max_length: int = 32) -> 'LMRetriever':
    """Encodes every user's text (``encoder.max_length`` tokens) and every item's text
    (``item_max_length`` tokens) into the index."""
    user_texts = list(user_texts)
    return cls(encoder, user_texts, Index(encoder(user_texts),
                                          encoder(list(item_texts), max_length=item_max_length),
                                          jnp.asarray(ratings, jnp.int8)))

  def query_embeddings(self, users: np.ndarray) -> jax.Array:
    """Encodes the query users' history texts now: ``[Q, D]``."""
    return self.encoder([self.user_texts[u] for u in np.asarray(users).tolist()])

  def retrieve(self, users: np.ndarray, items: np.ndarray, n: int) -> Evidence:
    return self.index.retrieve(self.query_embeddings(users), users, items, n)

  def retrieve_cached(self, users: np.ndarray, items: np.ndarray, n: int) -> Evidence:
    """As :meth:`retrieve` with the query embeddings taken from the index (the same texts were
    encoded into it): identical evidence up to float rounding, without re-encoding."""
    return self.index.retrieve(self.index.user_emb[jnp.asarray(users, jnp.int32)], users, items,
                               n)
