"""Early-exit serving of the OptiRAG-Rec model: deeper layers run only on the rows still running.

Two servers with one call signature and one result, so either can stand in for the other:

* :class:`EarlyExitServer` (host loop): one jitted layer + head per step; after each layer the
  host reads the margins, applies :func:`jaxrec.layers.exit_heads.exit_now`, gathers the rows
  still running (padded to a multiple of ``bucket``) and launches the next layer. Cheap where a
  layer's compute dominates (CPU); on a GPU the per-layer round trip costs more than the layers.
* :class:`DeviceEarlyExitServer` (on the device): one jitted program per batch size. Embedding,
  then a ``lax.while_loop`` over the layers (their params stacked on a leading axis, indexed by
  the loop counter): the exit test (:func:`jaxrec.layers.exit_heads.device_exit_now`), a stable
  compaction of the running rows to the front, and the layer run on a static bucket of those
  rows, picked by ``lax.switch`` from a ladder of sizes (:func:`bucket_ladder`). The loop ends
  when no row is running; the host sees only the final result.

Both return ``(margin float32 [B], exit layer int64 [B] (0-based), rows run per layer int64
[L])``; margins and exit layers are the policy applied to the full-depth heads
(:func:`jaxrec.layers.exit_heads.exits_at`), up to float32 rounding of the margins. "Rows run" is
the padded row count each layer ran on (0 after the last layer run); the two servers pad
differently (multiples of ``bucket`` vs the ladder), so only these counts may differ.

Example::

  server = DeviceEarlyExitServer(config, params)         # or EarlyExitServer(config, params)
  margin, layer, rows = server(ids, mask, threshold=1.0)  # ids, mask: [B, T]
  ctr = jax.nn.sigmoid(margin)
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.dataset import pad_array
from jaxrec.layers.bert import BertConfig
from jaxrec.layers.exit_heads import (device_exit_now, exit_now, head_forward, select_head,
                                      yes_no_margin)
from jaxrec.models.optirag import embed, run_layer

PyTree = Any
LADDERS = ('halves', 'multiples')


# ------------------------------------------------------------------------------ shared helpers


def bucket_size(n: int, multiple: int) -> int:
  """``n`` rounded up to a multiple of ``multiple`` (the padded batch a layer runs on)."""
  return -(-n // multiple) * multiple


def bucket_ladder(batch: int, bucket: int, ladder: str = 'halves') -> tuple[int, ...]:
  """The static row counts a layer of :class:`DeviceEarlyExitServer` may run on, largest first.

  ``batch`` first (no padding at full width), then

  * ``'halves'``: each size halved and rounded up to a multiple of ``bucket``, while that is
    smaller (``64, 8 -> (64, 32, 16, 8)``; ``100, 8 -> (100, 56, 32, 16, 8)``): at most twice
    the running rows, ``log2(batch / bucket)`` compiled copies of a layer;
  * ``'multiples'``: every multiple of ``bucket`` below ``batch`` (``20, 8 -> (20, 16, 8)``):
    the host loop's padding, one compiled copy per size.
  """
  _check_bucket(bucket)
  if batch < 1:
    raise ValueError(f'batch must be >= 1, got {batch}')
  if ladder == 'halves':
    sizes = [batch]
    while (n := bucket_size(-(-sizes[-1] // 2), bucket)) < sizes[-1]:
      sizes.append(n)
    return tuple(sizes)
  if ladder == 'multiples':
    return (batch,) + tuple(range(bucket_size(batch, bucket) - bucket, 0, -bucket))
  raise ValueError(f'ladder must be one of {LADDERS}, got {ladder!r}')


def layer_and_margin(config: BertConfig, layer_params: PyTree, head_params: PyTree,
                     h: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One encoder layer and its exit head (unstacked ``head_params``): ``h [n, T, D]``, ``mask
  [n, T]`` -> ``(h [n, T, D], margin [n])``."""
  h = run_layer(config, layer_params, h, mask)
  return h, yes_no_margin(head_forward(head_params, h, mask))


def _check_bucket(bucket: int) -> None:
  if isinstance(bucket, bool) or not isinstance(bucket, (int, np.integer)) or bucket < 1:
    raise ValueError(f'bucket must be an int >= 1, got {bucket!r}')


def check_request(config: BertConfig, input_ids, attention_mask, agree: int,
                  min_layer: int) -> tuple[np.ndarray, np.ndarray]:
  """The request as ``int32 [B, T]`` ids and mask; a clear error for a malformed one."""
  ids, mask = np.asarray(input_ids), np.asarray(attention_mask)
  if ids.ndim != 2 or ids.shape != mask.shape:
    raise ValueError(f'input_ids {ids.shape} and attention_mask {mask.shape} must both be '
                     '[batch, tokens] of one shape')
  if not ids.shape[0] or not ids.shape[1]:
    raise ValueError(f'empty request: input_ids {ids.shape}')
  if not np.issubdtype(ids.dtype, np.integer):
    raise TypeError(f'input_ids must be integers, got {ids.dtype}')
  if ids.shape[1] > config.max_position:
    raise ValueError(f'{ids.shape[1]} tokens exceed max_position={config.max_position}')
  if agree < 0 or min_layer < 0:
    raise ValueError(f'agree and min_layer must be >= 0, got {agree}, {min_layer}')
  return ids.astype(np.int32), mask.astype(np.int32)


# --------------------------------------------------------------------------- host-loop server


class EarlyExitServer:
  """Layer-by-layer inference that drops exited samples from the batch, deciding on the host.

  Each layer runs (jitted; one compilation per padded batch size, shared by all layers and
  calls) on the samples still running, padded up to a multiple of ``bucket``; the rows that exit
  are removed before the next layer, so deeper layers run on fewer rows.

  Args:
    config: encoder config; params: model params (``{'encoder', 'heads'}``; put on the default
      device once); bucket: padding granularity of the batch.

  Call: ``input_ids``, ``attention_mask`` ``[B, T]`` (numpy), then the exit policy ``threshold``,
  ``agree``, ``min_layer`` (:func:`jaxrec.layers.exit_heads.exit_now`). Returns ``(margin
  float32 [B], exit layer int64 [B] (0-based), rows run per layer int64 [L])``.
  """

  def __init__(self, config: BertConfig, params: PyTree, bucket: int = 8):
    _check_bucket(bucket)
    # on the device once: numpy params would be copied to it at every layer call
    self.config, self.params, self.bucket = config, jax.device_put(params), bucket
    self._embed = jax.jit(lambda p, ids: embed(config, p, ids))
    self._layer = jax.jit(lambda lp, heads, l, h, mask: layer_and_margin(
        config, lp, select_head(heads, l), h, mask))

  def __call__(self, input_ids, attention_mask, threshold: float, agree: int = 1,
               min_layer: int = 0):
    ids, mask = check_request(self.config, input_ids, attention_mask, agree, min_layer)
    L, B = self.config.num_layers, len(ids)
    margin_out = np.zeros(B, np.float32)
    layer_out = np.full(B, L - 1, np.int64)
    history = np.zeros((L, B), np.float32)
    rows_run = np.zeros(L, np.int64)
    idx = np.arange(B)
    padded = pad_array(ids, bucket_size(B, self.bucket))
    h = np.asarray(self._embed(self.params['encoder'], padded))[:B]
    for l in range(L):
      n = len(idx)
      rows_run[l] = size = bucket_size(n, self.bucket)
      h_new, m = self._layer(self.params['encoder'][f'layer_{l}'], self.params['heads'],
                             jnp.int32(l), pad_array(h, size), pad_array(mask, size))
      m = np.asarray(m)[:n]
      history[l, idx] = m
      done = exit_now(m, history[:l, idx], l, L, threshold, agree, min_layer)
      margin_out[idx[done]] = m[done]
      layer_out[idx[done]] = l
      keep = ~done
      if not keep.any():
        break
      idx, mask = idx[keep], mask[keep]
      h = np.asarray(h_new)[:n][keep]
    return margin_out, layer_out, rows_run


# ------------------------------------------------------------------------------ device server


def stack_layers(encoder_params: PyTree, num_layers: int) -> PyTree:
  """The ``layer_0 .. layer_{L-1}`` subtrees as one tree whose leaves are ``[L, ...]``."""
  return jax.tree.map(lambda *xs: jnp.stack(xs),
                      *[encoder_params[f'layer_{i}'] for i in range(num_layers)])


class _Loop(NamedTuple):
  """The device loop's state; rows of ``h``, ``mask``, ``row`` are in running-first order."""
  layer: jax.Array  # int32 []: the next layer to run
  running: jax.Array  # int32 []: rows still running, h[:running]
  h: jax.Array  # [B, T, D]
  mask: jax.Array  # int32 [B, T]
  row: jax.Array  # int32 [B]: the request row at each position
  history: jax.Array  # float32 [L, B]: margins by request row
  margin: jax.Array  # float32 [B]: the prediction by request row
  exit_layer: jax.Array  # int32 [B]
  rows_run: jax.Array  # int32 [L]


def _layer_step(config: BertConfig, size: int, s: _Loop, layer_params: PyTree,
                head_params: PyTree, policy: tuple) -> _Loop:
  """One layer on the first ``size`` positions (every running row is among them): margins, the
  exit decision, the predictions of the rows that exit, and the survivors moved to the front."""
  B = s.row.shape[0]
  h, mask, row = s.h[:size], s.mask[:size], s.row[:size]
  h, m = layer_and_margin(config, layer_params, head_params, h, mask)  # [size, T, D], [size]
  live = jnp.arange(size) < s.running
  done = device_exit_now(m, s.history[:, row], s.layer, *policy) & live
  stay = live & ~done
  where = lambda keep: jnp.where(keep, row, B)  # B is out of range: dropped by the scatter
  order = jnp.argsort(~stay, stable=True)  # survivors first, in their order
  return _Loop(
      layer=s.layer + 1, running=jnp.sum(stay, dtype=jnp.int32),
      h=s.h.at[:size].set(h[order]), mask=s.mask.at[:size].set(mask[order]),
      row=s.row.at[:size].set(row[order]),
      history=s.history.at[s.layer, where(live)].set(m, mode='drop'),
      margin=s.margin.at[where(done)].set(m, mode='drop'),
      exit_layer=s.exit_layer.at[where(done)].set(s.layer, mode='drop'),
      rows_run=s.rows_run.at[s.layer].set(size))


def serve_on_device(config: BertConfig, bucket: int, ladder: str, params: PyTree,
                    input_ids: jax.Array, mask: jax.Array, threshold, agree,
                    min_layer) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The device server's program (jit it; ``config``, ``bucket``, ``ladder`` static).

  Args:
    params: ``{'embeddings', 'layers' (stacked by :func:`stack_layers`), 'heads'}``.
    input_ids, mask: ``int32 [B, T]``.
    threshold, agree, min_layer: the exit policy (traced: one program for every policy).

  Returns:
    ``(margin float32 [B], exit layer int32 [B], rows run per layer int32 [L])``.
  """
  L, B = config.num_layers, input_ids.shape[0]
  sizes = bucket_ladder(B, bucket, ladder)
  policy = (jnp.asarray(threshold, jnp.float32), jnp.asarray(agree, jnp.int32),
            jnp.asarray(min_layer, jnp.int32))
  h = embed(config, {'embeddings': params['embeddings']}, input_ids)  # [B, T, D]
  state = _Loop(layer=jnp.int32(0), running=jnp.int32(B), h=h, mask=mask,
                row=jnp.arange(B, dtype=jnp.int32), history=jnp.zeros((L, B), jnp.float32),
                margin=jnp.zeros(B, jnp.float32), exit_layer=jnp.full(B, L - 1, jnp.int32),
                rows_run=jnp.zeros(L, jnp.int32))
  branches = [functools.partial(_layer_step, config, size) for size in sizes]

  def body(s: _Loop) -> _Loop:
    smallest = jnp.sum(jnp.asarray(sizes) >= s.running) - 1  # the smallest size that holds them
    # select_head slices any stacked tree: layer params and heads alike
    return jax.lax.switch(smallest, branches, s, select_head(params['layers'], s.layer),
                          select_head(params['heads'], s.layer), policy)

  state = jax.lax.while_loop(lambda s: (s.layer < L) & (s.running > 0), body, state)
  return state.margin, state.exit_layer, state.rows_run


class DeviceEarlyExitServer:
  """Early exit decided on the device: one jitted program per batch size, no host round trip.

  Embedding, then a ``lax.while_loop`` over the layers: layer ``l`` (its params sliced from the
  stacked ``[L, ...]`` leaves by the loop counter) and its head run on the first ``size`` rows of
  the compacted state, ``size`` the smallest of :func:`bucket_ladder` that holds the running
  rows (``lax.switch`` over one compiled branch per size); the exit test is
  :func:`jaxrec.layers.exit_heads.device_exit_now`; exited rows record their margin and layer,
  the rest move to the front in their order (a stable ``argsort``). The loop stops once no row
  is running. Policy arguments are traced, so one compilation per batch size serves every
  ``threshold`` / ``agree`` / ``min_layer``.

  Args:
    config: encoder config; params: model params (``{'encoder', 'heads'}``; the layers stacked
      and all put on the default device once); bucket, ladder: the bucket sizes
      (:func:`bucket_ladder`).

  Call and result: as :class:`EarlyExitServer` (numpy ``(margin float32 [B], exit layer int64
  [B], rows run per layer int64 [L])``; rows run are the ladder sizes).
  """

  def __init__(self, config: BertConfig, params: PyTree, bucket: int = 8,
               ladder: str = 'halves'):
    _check_bucket(bucket)
    bucket_ladder(1, bucket, ladder)  # a bad ladder name fails here
    self.config, self.bucket, self.ladder = config, bucket, ladder
    enc = params['encoder']
    self.params = jax.device_put({'embeddings': enc['embeddings'],
                                  'layers': stack_layers(enc, config.num_layers),
                                  'heads': params['heads']})
    self._program = jax.jit(functools.partial(serve_on_device, config, bucket, ladder))

  def __call__(self, input_ids, attention_mask, threshold: float, agree: int = 1,
               min_layer: int = 0):
    ids, mask = check_request(self.config, input_ids, attention_mask, agree, min_layer)
    policy = _policy_args(threshold, agree, min_layer)
    margin, layer, rows = jax.device_get(self._program(self.params, ids, mask, *policy))
    return np.asarray(margin), np.asarray(layer, np.int64), np.asarray(rows, np.int64)

  def compiled_text(self, batch: int, tokens: int) -> str:
    """The optimised HLO of the program for ``[batch, tokens]`` requests (compiles it)."""
    ids = jax.ShapeDtypeStruct((batch, tokens), jnp.int32)
    return self._program.lower(self.params, ids, ids, *_policy_args(0.0, 1, 0)).compile().as_text()


def _policy_args(threshold, agree, min_layer) -> tuple:
  """The policy as numpy scalars of fixed dtypes, so every call hits one compiled program
  whatever Python or numpy types the caller passes."""
  return np.float32(threshold), np.int32(agree), np.int32(min_layer)
