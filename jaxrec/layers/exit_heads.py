"""Multi-head early exit: one Yes/No head per encoder layer, stacked and applied with ``jax.vmap``.

Every head has the same shape, so the ``L`` heads are held as one parameter set whose leaves
have a leading ``layers`` axis, and :func:`apply_heads` maps one head function over that axis
with ``jax.vmap``; :func:`select_head` slices out head ``l`` for the layer-by-layer serving path.

One head, on hidden states ``h [B, T, D]`` with mask ``[B, T]``::

  a      = softmax over kept tokens of (h . q) / sqrt(D)          # attention pooling
  x      = concat(sum_t a_t h_t, mean of kept h_t)                # [B, 2D]
  logits = W2 gelu(W1 x + b1) + b2                                # [B, 2] = (Yes, No)

The CTR logit is the Yes/No margin ``logit_yes - logit_no = log(p_yes / p_no)``; its size is the
head's confidence (the log of the Yes/No score ratio).

Exit policy (:func:`exits_at`): a sample leaves at the first layer ``l`` that is allowed
(``l >= min_layer`` and ``l >= agree``) whose margin is confident (``|m_l| >= threshold``) and
whose answer (``m > 0``: Yes) equals that of the ``agree`` heads before it; the last layer always
answers. The prediction is the margin of the exit layer. :func:`exit_now` is the decision at one
layer in numpy (a host loop); :func:`device_exit_now` is the same decision in ``jnp`` with static
shapes and traced layer / policy (inside a jitted loop over layers).

Logical axes: ``('layers', 'embed')`` for the pooling query, ``('layers', 'mlp_in', 'mlp')`` /
``('layers', 'mlp')`` for the hidden layer, ``('layers', 'mlp', 'mlp_out')`` /
``('layers', 'mlp_out')`` for the output layer.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def head_forward(p: PyTree, h: jax.Array, mask: jax.Array) -> jax.Array:
  """One head: ``p`` (unstacked), ``h [B, T, D]``, ``mask [B, T]`` -> logits ``[B, 2]``."""
  keep = mask.astype(bool)
  m = mask.astype(h.dtype)[..., None]
  scores = jnp.einsum('btd,d->bt', h, p['query']) / jnp.sqrt(h.shape[-1]).astype(h.dtype)
  attn = jax.nn.softmax(jnp.where(keep, scores, jnp.finfo(h.dtype).min), axis=-1)
  attn_pool = jnp.einsum('bt,btd->bd', attn, h)
  mean_pool = jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
  x = jnp.concatenate([attn_pool, mean_pool], axis=-1)  # [B, 2D]
  x = jax.nn.gelu(x @ p['kernel_1'] + p['bias_1'], approximate=False)
  return x @ p['kernel_2'] + p['bias_2']  # [B, 2]


def apply_heads(params: PyTree, hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """All heads at once: stacked ``params``, ``hidden [L, B, T, D]`` -> logits ``[L, B, 2]``."""
  return jax.vmap(head_forward, in_axes=(0, 0, None))(params, hidden, mask)


def select_head(params: PyTree, layer) -> PyTree:
  """Head ``layer`` of the stacked ``params`` (``layer`` may be a traced int)."""
  return jax.tree.map(lambda a: a[layer], params)


def yes_no_margin(logits: jax.Array) -> jax.Array:
  """``log(p_yes / p_no)`` of Yes/No logits ``[..., 2]`` -> ``[...]`` (the CTR logit)."""
  return logits[..., 0] - logits[..., 1]


class ExitHeads(nn.Module):
  """``num_layers`` Yes/No exit heads as one stacked parameter set.

  Attributes:
    num_layers: heads ``L`` (one per encoder layer).
    hidden_dim: width of each head's hidden layer.

  Call: ``hidden [L, B, T, D]``, ``mask [B, T]``. Returns Yes/No logits ``[L, B, 2]``.

  Example::

    heads = ExitHeads(num_layers=6, hidden_dim=128)
    variables = heads.init(key, hidden, mask)      # every leaf: [6, ...]
    logits = heads.apply(variables, hidden, mask)  # [6, B, 2]
  """
  num_layers: int
  hidden_dim: int = 128

  def __post_init__(self):
    for f in ('num_layers', 'hidden_dim'):
      v = getattr(self, f)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f'ExitHeads.{f} must be a positive int, got {v!r}')
    super().__post_init__()

  def _param(self, name, axes, shape, init):
    def stacked(key, shape):
      return jax.vmap(lambda k: init(k, shape[1:]))(jax.random.split(key, shape[0]))
    return self.param(name, nn.with_logical_partitioning(stacked, axes), shape)

  @nn.compact
  def __call__(self, hidden: jax.Array, mask: jax.Array) -> jax.Array:
    L, _, _, D = hidden.shape
    if L != self.num_layers:
      raise ValueError(f'ExitHeads: hidden has {L} layers, expected {self.num_layers}')
    H = self.hidden_dim
    dense = nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal')
    zeros = nn.initializers.zeros_init()
    params = {
        'query': self._param('query', ('layers', 'embed'), (L, D),
                             nn.initializers.normal(0.02)),
        'kernel_1': self._param('kernel_1', ('layers', 'mlp_in', 'mlp'), (L, 2 * D, H), dense),
        'bias_1': self._param('bias_1', ('layers', 'mlp'), (L, H), zeros),
        'kernel_2': self._param('kernel_2', ('layers', 'mlp', 'mlp_out'), (L, H, 2), dense),
        'bias_2': self._param('bias_2', ('layers', 'mlp_out'), (L, 2), zeros),
    }
    return apply_heads(params, hidden, mask)


# ----------------------------------------------------------------------------------- exit policy


def exit_now(margin: np.ndarray, previous: np.ndarray, layer: int, num_layers: int,
             threshold: float, agree: int = 1, min_layer: int = 0) -> np.ndarray:
  """The exit decision at ``layer`` (0-based) for the samples still running.

  Args:
    margin: this layer's Yes/No margins ``[n]``.
    previous: margins of the layers before, ``[layer, n]`` or at least its last ``agree`` rows
      (most recent last).
    layer, num_layers: this layer and the depth ``L``; at ``L - 1`` every sample exits.
    threshold: the confidence needed, ``|log(p_yes / p_no)| >= threshold``.
    agree: how many previous heads must give the same answer (``m > 0``: Yes); no exit before
      layer ``agree``.
    min_layer: no exit before this layer.

  Returns:
    ``bool [n]``.
  """
  margin = np.asarray(margin)
  if layer == num_layers - 1:
    return np.ones(margin.shape, bool)
  if layer < max(min_layer, agree):
    return np.zeros(margin.shape, bool)
  previous = np.asarray(previous)
  if len(previous) < agree:
    raise ValueError(f'layer {layer}: {len(previous)} previous margins given, agree={agree}')
  ok = np.abs(margin) >= threshold
  yes = margin > 0
  for prev in previous[len(previous) - agree:]:
    ok &= (prev > 0) == yes
  return ok


def device_exit_now(margin: jax.Array, history: jax.Array, layer, threshold, agree=1,
                    min_layer=0) -> jax.Array:
  """:func:`exit_now` in ``jnp``, for a decision inside a jitted loop over layers.

  Args:
    margin: this layer's Yes/No margins ``[n]``.
    history: margins of every layer ``[L, n]`` for the same samples; only rows
      ``layer - agree .. layer - 1`` are read (the others may hold anything), so its shape does
      not depend on ``layer``.
    layer: this layer (0-based, may be traced); at ``L - 1`` every sample exits.
    threshold, agree, min_layer: as :func:`exit_now` (may be traced; ``threshold`` is compared
      in the margins' dtype, as numpy compares a float32 array with a Python float).

  Returns:
    ``bool [n]``, equal to :func:`exit_now` on the same margins.
  """
  L = history.shape[0]
  j = jnp.arange(L)[:, None]
  window = (j >= layer - agree) & (j < layer)  # [L, 1]: the agree heads before this one
  same = ((history > 0) == (margin > 0)) | ~window  # [L, n]
  allowed = layer >= jnp.maximum(min_layer, agree)
  threshold = jnp.asarray(threshold, margin.dtype)
  ok = allowed & (jnp.abs(margin) >= threshold) & jnp.all(same, axis=0)
  return ok | (layer == L - 1)


def exits_at(margins: np.ndarray, threshold: float, agree: int = 1,
             min_layer: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Exit layers and predictions from all layers' margins (the policy of :func:`exit_now`,
  simulated on a full-depth pass).

  Args:
    margins: ``[L, B]`` Yes/No margins of every head.
    threshold, agree, min_layer: as :func:`exit_now`.

  Returns:
    ``(exit_layer int [B], margin at the exit layer [B])``.
  """
  margins = np.asarray(margins)
  if margins.ndim != 2:
    raise ValueError(f'margins must be [layers, batch], got shape {margins.shape}')
  if agree < 0 or min_layer < 0:
    raise ValueError(f'agree and min_layer must be >= 0, got {agree}, {min_layer}')
  L, B = margins.shape
  exit_layer = np.full(B, L - 1)
  running = np.ones(B, bool)
  for l in range(L):
    now = exit_now(margins[l], margins[:l], l, L, threshold, agree, min_layer) & running
    exit_layer[now] = l
    running &= ~now
  return exit_layer, margins[exit_layer, np.arange(B)]
