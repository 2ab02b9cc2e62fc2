"""OptiRAG-Rec's prompted CTR model: a BERT encoder with one Yes/No exit head per layer.

The prompt (the user's recent history, the retrieved similar users' evidence and the target item,
as text) is encoded by :class:`~jaxrec.layers.bert.BertEncoder`; head ``l`` reads layer ``l``'s
hidden states and answers Yes/No; the CTR logit is ``log(p_yes / p_no)`` (Zhou et al., ACL 2025,
arXiv 2501.02173).

Training (:func:`make_train_step`): the weighted sum over heads of each head's binary
cross-entropy; the embeddings and the first ``frozen_layers`` layers stay at their pretrained
values, so their hidden states are computed once (:func:`frozen_states`) and the step runs only
the upper layers; :func:`make_optimizer` gives the upper layers AdamW and the heads Adam with a
larger learning rate for shallower heads, combined with ``optax.multi_transform``.

:func:`full_depth_margins` is the full-depth reference (one jitted pass); the early-exit servers,
which run later layers only on the samples still running, are in :mod:`jaxrec.serving.early_exit`
(they use :func:`embed` and :func:`run_layer`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxrec.layers.bert import BertConfig, BertEmbeddings, BertEncoder, BertLayer
from jaxrec.layers.exit_heads import ExitHeads, apply_heads, yes_no_margin

PyTree = Any


class OptiRAGCTR(nn.Module):
  """Encoder + stacked exit heads.

  Attributes:
    config: the encoder config.
    head_hidden: hidden width of each exit head.

  Call: ``input_ids int [B, T]``, ``attention_mask [B, T]``, ``train``.
  Returns Yes/No logits of every head, ``[L, B, 2]`` (head ``l`` on layer ``l + 1``'s output).
  Params: ``{'encoder': ..., 'heads': ...}``.
  """
  config: BertConfig
  head_hidden: int = 128

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               train: bool = False) -> jax.Array:
    hidden = BertEncoder(self.config, name='encoder')(input_ids, attention_mask, None, train)
    return ExitHeads(self.config.num_layers, self.head_hidden, name='heads')(hidden[1:],
                                                                           attention_mask)


def init_params(model: OptiRAGCTR, key: jax.Array, encoder_params: Optional[PyTree] = None,
                seq_len: int = 8) -> PyTree:
  """Unboxed params of ``model``; with ``encoder_params`` (e.g. pretrained) only the heads are
  initialised and the encoder's params are checked against the model's shapes."""
  ids = jnp.zeros((1, seq_len), jnp.int32)
  if encoder_params is None:
    return nn.meta.unbox(model.init(key, ids, jnp.ones_like(ids))['params'])
  want = param_shapes(model, seq_len)['encoder']
  got = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)),
                     encoder_params)
  if jax.tree.structure(want) != jax.tree.structure(got) or jax.tree.leaves(want) != [
      jax.ShapeDtypeStruct(g.shape, w.dtype) for g, w in zip(jax.tree.leaves(got),
                                                             jax.tree.leaves(want))]:
    raise ValueError('encoder_params do not match the model config')
  c = model.config
  hidden = jnp.zeros((c.num_layers, 1, seq_len, c.hidden_size), jnp.float32)
  heads = ExitHeads(c.num_layers, model.head_hidden).init(key, hidden, jnp.ones_like(ids))
  return {'encoder': encoder_params, 'heads': nn.meta.unbox(heads['params'])}


def param_shapes(model: OptiRAGCTR, seq_len: int = 8) -> PyTree:
  """The unboxed param tree of ``model`` as ``jax.ShapeDtypeStruct`` leaves (nothing computed)."""
  ids = jnp.zeros((1, seq_len), jnp.int32)
  return jax.eval_shape(lambda: nn.meta.unbox(
      model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids))['params']))


# --------------------------------------------------------------------------- functional pieces


def embed(config: BertConfig, enc_params: PyTree, input_ids: jax.Array) -> jax.Array:
  """Embedding output ``[B, T, D]`` (inference)."""
  return BertEmbeddings(config).apply({'params': enc_params['embeddings']}, input_ids)


def run_layer(config: BertConfig, layer_params: PyTree, h: jax.Array, mask: jax.Array,
              train: bool = False, rng: Optional[jax.Array] = None) -> jax.Array:
  """One encoder layer on ``h [B, T, D]``."""
  rngs = {'dropout': rng} if train else None
  return BertLayer(config).apply({'params': layer_params}, h, mask, train, rngs=rngs)


def frozen_states(config: BertConfig, enc_params: PyTree, input_ids: jax.Array,
                  mask: jax.Array, frozen_layers: int) -> jax.Array:
  """Inference hidden states ``[max(1, k), B, T, D]``: layers ``1..k`` for ``k >= 1`` frozen
  layers (the last one feeds layer ``k + 1``), the embedding output for ``k = 0``."""
  h = embed(config, enc_params, input_ids)
  states = []
  for i in range(frozen_layers):
    h = run_layer(config, enc_params[f'layer_{i}'], h, mask)
    states.append(h)
  return jnp.stack(states) if states else h[None]


def upper_logits(config: BertConfig, params: PyTree, states: jax.Array, mask: jax.Array,
                 frozen_layers: int, train: bool = False,
                 rng: Optional[jax.Array] = None) -> jax.Array:
  """Logits ``[L, B, 2]`` from :func:`frozen_states` ``states``: runs layers ``k+1..L``, then all
  heads (``params`` needs only the upper layers and the heads)."""
  h = states[-1]
  hidden = list(states) if frozen_layers else []
  for i in range(frozen_layers, config.num_layers):
    key = None if rng is None else jax.random.fold_in(rng, i)
    h = run_layer(config, params['encoder'][f'layer_{i}'], h, mask, train, key)
    hidden.append(h)
  return apply_heads(params['heads'], jnp.stack(hidden), mask)


def full_depth_margins(config: BertConfig, params: PyTree, input_ids: jax.Array,
                       mask: jax.Array) -> jax.Array:
  """Margins of every head ``[L, B]`` in one pass (inference)."""
  return yes_no_margin(OptiRAGCTR(config, _head_hidden(params)).apply(
      {'params': params}, input_ids, mask))


def predict_margins(config: BertConfig, params: PyTree, input_ids: np.ndarray,
                    attention_mask: np.ndarray, batch_size: int = 64) -> np.ndarray:
  """Margins of every head for all rows, ``[L, N]``, in jitted batches (the last one padded)."""
  fn = jax.jit(lambda p, i, m: full_depth_margins(config, p, i, m))
  out = []
  for s in range(0, len(input_ids), batch_size):
    ids, mask = input_ids[s:s + batch_size], attention_mask[s:s + batch_size]
    n = len(ids)
    pad = batch_size - n
    if pad:
      ids = np.concatenate([ids, np.zeros((pad,) + ids.shape[1:], ids.dtype)])
      mask = np.concatenate([mask, np.zeros((pad,) + mask.shape[1:], mask.dtype)])
    out.append(np.asarray(fn(params, ids, mask))[:, :n])
  return np.concatenate(out, axis=1)


def _head_hidden(params: PyTree) -> int:
  return int(params['heads']['bias_1'].shape[-1])


# ----------------------------------------------------------------------------------- training


def split_trainable(params: PyTree, frozen_layers: int, num_layers: int) -> tuple[dict, dict]:
  """``(trainable, frozen)``: upper encoder layers + heads vs embeddings + lower layers."""
  enc = params['encoder']
  upper = {f'layer_{i}': enc[f'layer_{i}'] for i in range(frozen_layers, num_layers)}
  lower = {k: v for k, v in enc.items() if k not in upper}
  return {'encoder': upper, 'heads': params['heads']}, {'encoder': lower}


def merge_params(trainable: dict, frozen: dict) -> dict:
  return {'encoder': {**frozen['encoder'], **trainable['encoder']}, 'heads': trainable['heads']}


def head_learning_rates(base: float, num_layers: int, shallow_factor: float) -> np.ndarray:
  """Per-head learning rates, ``base * shallow_factor`` for the first head falling geometrically
  to ``base`` for the last: ``float32 [L]``."""
  if num_layers == 1:
    return np.array([base], np.float32)
  t = (num_layers - 1 - np.arange(num_layers)) / (num_layers - 1)
  return (base * shallow_factor ** t).astype(np.float32)


def scale_by_layer(rates: np.ndarray) -> optax.GradientTransformation:
  """Multiplies each update of a stacked leaf ``[L, ...]`` by ``-rates[l]`` along axis 0."""
  rates = jnp.asarray(rates)

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: -u * rates.reshape((-1,) + (1,) * (u.ndim - 1)),
                        updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(backbone_lr: float, head_lrs: np.ndarray, weight_decay: float = 0.01,
                   max_grad_norm: float = 1.0, warmup_steps: int = 0,
                   total_steps: int = 0) -> optax.GradientTransformation:
  """``multi_transform``: AdamW (linear warmup, then linear decay to 0 over ``total_steps`` if
  set) on the ``'encoder'`` subtree, Adam with per-head rates ``head_lrs [L]`` on ``'heads'``;
  global-norm clipping first."""
  if total_steps:
    sched = optax.join_schedules(
        [optax.linear_schedule(0.0, backbone_lr, max(warmup_steps, 1)),
         optax.linear_schedule(backbone_lr, 0.0, max(total_steps - warmup_steps, 1))],
        [max(warmup_steps, 1)])
  else:
    sched = backbone_lr
  tx = optax.multi_transform(
      {'backbone': optax.adamw(sched, weight_decay=weight_decay),
       'heads': optax.chain(optax.scale_by_adam(), scale_by_layer(head_lrs))},
      lambda tree: {k: jax.tree.map(lambda _: 'backbone' if k == 'encoder' else 'heads', v)
                    for k, v in tree.items()})
  return optax.chain(optax.clip_by_global_norm(max_grad_norm), tx) if max_grad_norm else tx


def multi_head_loss(logits: jax.Array, labels: jax.Array,
                    layer_weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``sum_l w_l * BCE(head l)``: logits ``[L, B, 2]``, labels ``[B]``, weights ``[L]``.

  Returns ``(loss, per-head losses [L])``."""
  per = optax.sigmoid_binary_cross_entropy(yes_no_margin(logits), labels[None, :]).mean(-1)
  return jnp.sum(layer_weights * per), per


def make_train_step(config: BertConfig, tx: optax.GradientTransformation, frozen_layers: int,
                    layer_weights: Sequence[float]) -> Callable:
  """``step(trainable, opt_state, batch, rng) -> (trainable, opt_state, loss, per-head [L])``;
  ``batch``: ``states`` (from :func:`frozen_states`, any float dtype), ``attention_mask``,
  ``label``."""
  w = jnp.asarray(layer_weights, jnp.float32)
  if w.shape != (config.num_layers,):
    raise ValueError(f'layer_weights must have {config.num_layers} entries, got {w.shape}')

  def step(trainable, opt_state, batch, rng):
    def loss_fn(p):
      logits = upper_logits(config, p, batch['states'].astype(jnp.float32),
                            batch['attention_mask'], frozen_layers, True, rng)
      return multi_head_loss(logits, batch['label'], w)
    (loss, per), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, loss, per

  return step


# ------------------------------------------------------------------------------------- config


def optirag_config(retriever: str = 'gcn') -> ml_collections.ConfigDict:
  """The study's settings; ``retriever`` is ``'none'``, ``'gcn'`` or ``'lm'``."""
  if retriever not in ('none', 'gcn', 'lm'):
    raise ValueError(f'retriever must be none, gcn or lm, got {retriever!r}')
  c = ml_collections.ConfigDict()
  c.data_dir = '../shared/data/movielens-100k'
  c.train_per_user, c.valid_per_user, c.test_per_user = 10, 2, 3
  c.rating_threshold = 4.0
  c.retriever = retriever
  c.num_similar_users = 5  # N
  c.history_length = 5
  c.max_length = 64  # prompt tokens
  c.lm_history_length = 20  # items in an LM-retriever user text
  c.lm_max_length = 128
  c.latency_queries = 128  # test queries timed per retrieval batch size (32 of them one by one)
  c.gcn = ml_collections.ConfigDict(dict(dim=64, num_layers=3, learning_rate=1e-3, l2=1e-4,
                                         batch_size=2048, epochs=200, seed=0))
  c.head_hidden = 128
  c.frozen_layers = 2
  c.dropout_rate = 0.1
  c.batch_size = 16
  c.epochs = 1
  c.max_train_samples = 5000  # a random subset of the 9,430 train prompts (0 = all)
  c.max_valid_samples = 943  # a random subset of the 1,886 (0 = all)
  c.max_test_samples = 0  # 0 = all 2,829 test prompts
  c.backbone_lr = 1e-4
  c.head_lr = 1e-3
  c.shallow_head_lr_factor = 3.0  # first head's lr = head_lr * this
  c.layer_weights = (1.0,) * 6
  c.weight_decay = 0.01
  c.warmup_fraction = 0.06
  c.eval_batch_size = 64
  c.seed = 0
  return c
