"""Per-example forward FLOPs of every registered model, computed analytically from its
hyperparameters: the CTR models here, the image classifiers by ``jaxrec.models.vision_flops``
(without padding taps), the mixed-modal decoder LM by ``mixed_modal_lm_flops_breakdown`` (one
example = one sequence; matmuls only).

``per_example_flops(model)`` (or ``config_flops(name, schema, embedding_dim, **kwargs)``) counts
the arithmetic of one example's forward pass in inference mode (BatchNorm with running averages,
no dropout); ``flops_breakdown`` gives the same total split by component.

Convention:

* a multiply-add is **2 FLOPs**: a dense layer ``[in] -> [out]`` costs ``2 in out`` (+ ``out`` for
  its bias), an einsum ``2 x`` the product of all its index sizes;
* every other elementwise operation (add, multiply, max, ReLU, ...) is 1 FLOP per output element,
  and so is every transcendental (exp, tanh, rsqrt, sigmoid), which XLA's cost model reports apart
  as ``transcendentals``: compare this count with ``flops + transcendentals``;
* a reduction over ``n`` elements costs ``n``; LayerNorm over ``n`` costs ``7 n + 1`` (two sums, a
  square, centring, normalising, scale and shift, one rsqrt), eval-mode BatchNorm ``2`` per
  feature (its per-feature factors do not depend on the example), softmax over ``n`` ``5 n``;
* embedding lookups are memory traffic, 0 FLOPs; a multi-hot bag of length ``L`` costs its
  weighted pooling ``2 L d + 2 L`` (+ ``d`` for mean pooling);
* only work that scales with the batch counts (per-example marginal cost).

The count is checked against XLA's cost analysis of the compiled forward
(``jax.jit(f).lower(...).compile().cost_analysis()``, difference of two batch sizes) in
tests/models/test_flops.py: within 3% for every model with a dense network (the gap is XLA's own
accounting of LayerNorm, BatchNorm and softmax internals); for LR and FM, which have no matmuls,
XLA's count is dominated by the index arithmetic of the embedding gathers (bounds checks, about
10-20 FLOPs per lookup), which this model-FLOP count leaves out by design.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn

from jaxrec.data.schema import FeatureSchema
from jaxrec.models.dcnv2 import DCNv2
from jaxrec.models.deepfm import DeepFM
from jaxrec.models.dhen import DHEN
from jaxrec.models.dlrm import DLRM
from jaxrec.models.fm import FM
from jaxrec.models.flop_units import Breakdown, dense
from jaxrec.models.lr import LR
from jaxrec.models.mixed_modal_lm import DecoderLM, mixed_modal_lm_flops_breakdown
from jaxrec.models.vision import CNN, ResNet
from jaxrec.models.vision_flops import vision_flops_breakdown
from jaxrec.models.wukong import Wukong

# ---- building blocks (Breakdown and dense: jaxrec.models.flop_units) ----


def activation(n: int, name) -> int:
  """``n`` elements through an activation (identity / None: free)."""
  return 0 if name in (None, 'identity') else n


def mlp(n_in: int, hidden_units: Sequence[int] = (), output_dim: Optional[int] = None,
        batch_norm: bool = False, act='relu', output_activation=None,
        use_bias: bool = True) -> int:
  """``jaxrec.layers.mlp.MLP`` on one example."""
  total = 0
  for h in hidden_units:
    total += dense(n_in, h, use_bias) + (2 * h if batch_norm else 0) + activation(h, act)
    n_in = h
  if output_dim is not None:
    total += dense(n_in, output_dim, use_bias) + activation(output_dim, output_activation)
  return total


def layer_norm(n: int) -> int:
  """LayerNorm over ``n`` features."""
  return 7 * n + 1


def softmax(n: int) -> int:
  return 5 * n


def embedding(schema: FeatureSchema, dim: int) -> int:
  """``FieldEmbedding``: one-hot lookups are free; multi-hot bags are pooled."""
  total = 0
  for f in schema.multi_hot_fields:
    total += 2 * f.max_length * dim + 2 * f.max_length + (dim if f.pooling == 'mean' else 0)
  return total


def linear_logit(schema: FeatureSchema, use_bias: bool = True) -> int:
  """``LinearLogit``: dim-1 lookups summed over fields, the dense term, the bias."""
  total = embedding(schema, 1) + schema.num_fields
  if schema.num_dense:
    total += dense(schema.num_dense, 1, bias=False) + 1
  return total + (1 if use_bias else 0)


def bi_interaction(fields: int, dim: int) -> int:
  """FM's ``0.5 ((sum e)^2 - sum e^2)``: two sums, two squares, a difference, a scale."""
  return 3 * fields * dim + 3 * dim


def _embed_with_dense(m) -> tuple[int, int]:
  """Wukong / DHEN embedding layer: (FLOPs, number of embeddings n)."""
  s, d = m.schema, m.embedding_dim
  total, n = embedding(s, d), s.num_fields
  if s.num_dense:
    total += mlp(s.num_dense, m.dense_mlp_units, m.num_dense_embeddings * d, act=m.activation)
    n += m.num_dense_embeddings
  return total, n


def _add(b: Breakdown, key: str, value: int) -> None:
  b[key] = b.get(key, 0) + int(value)


# ---- models ----


def _lr(m: LR) -> Breakdown:
  return {'linear': linear_logit(m.schema)}


def _fm(m: FM) -> Breakdown:
  s, d = m.schema, m.embedding_dim
  return {'linear': linear_logit(s), 'embedding': embedding(s, d),
          'fm': bi_interaction(s.num_fields, d) + d + 1}


def _deepfm(m: DeepFM) -> Breakdown:
  s, d = m.schema, m.embedding_dim
  return {'linear': linear_logit(s, use_bias=False), 'embedding': embedding(s, d),
          'fm': bi_interaction(s.num_fields, d) + d + 2,
          'dnn': mlp(s.num_fields * d + s.num_dense, m.hidden_units, 1, m.batch_norm,
                     m.activation)}


def _dlrm(m: DLRM) -> Breakdown:
  s, d = m.schema, m.embedding_dim
  b = {'embedding': embedding(s, d)}
  fields = s.num_fields
  if s.num_dense:
    b['bottom_mlp'] = mlp(s.num_dense, m.bottom_mlp_units, d, m.batch_norm, m.activation,
                          m.activation)
    fields += 1
  if m.interaction == 'dot':
    b['interaction'] = 2 * fields * fields * d  # the full Gram matrix, then its upper triangle
    top_in = fields * (fields - 1) // 2 + (d if s.num_dense else 0)
  else:
    top_in = fields * d
  b['top_mlp'] = mlp(top_in, m.top_mlp_units, 1, m.batch_norm, m.activation)
  return b


def cross_layer(dim: int) -> int:
  """Full-rank ``x0 * (x W + b) + x``."""
  return 2 * dim * dim + 3 * dim


def low_rank_cross_layer(dim: int, rank: int, experts: int, act) -> int:
  """``LowRankMoECrossLayer``: experts, softmax gate, weighted combination, residual."""
  per_expert = (2 * dim * rank + activation(rank, act) + 2 * rank * rank + activation(rank, act)
                + 2 * rank * dim + 2 * dim)  # V, g, C, g, U, + b, * x0
  gate = 2 * dim * experts + softmax(experts)
  return experts * per_expert + gate + 2 * experts * dim + dim


def _dcnv2(m: DCNv2) -> Breakdown:
  s, d = m.schema, m.embedding_dim
  dim = s.num_fields * d + s.num_dense
  if m.use_low_rank_mixture:
    layer = low_rank_cross_layer(dim, m.low_rank, m.num_experts, m.low_rank_activation)
  else:
    layer = cross_layer(dim)
  b = {'embedding': embedding(s, d), 'crossnet': m.num_cross_layers * layer}
  width = dim
  st = m.model_structure
  if st in ('stacked', 'stacked_parallel'):
    b['stacked_dnn'] = mlp(dim, m.stacked_dnn_hidden_units, None, m.batch_norm, m.activation)
    width = m.stacked_dnn_hidden_units[-1] if m.stacked_dnn_hidden_units else dim
  if st in ('parallel', 'stacked_parallel'):
    b['parallel_dnn'] = mlp(dim, m.parallel_dnn_hidden_units, None, m.batch_norm, m.activation)
    width += m.parallel_dnn_hidden_units[-1] if m.parallel_dnn_hidden_units else dim
  b['fc'] = dense(width, 1)
  return b


def optimized_fm(n: int, d: int, k: int, projected: bool) -> int:
  """``X (X^T Y)``: two ``n d k`` contractions (+ ``Y = X P`` when projected)."""
  return 4 * n * d * k + (2 * n * d * k if projected else 0)


def wukong_layer(n: int, d: int, nf: int, nl: int, k: int, mlp_units: Sequence[int],
                 projected: bool, act) -> int:
  """One ``WukongLayer`` on ``n`` embeddings of width ``d``."""
  total = 0
  if nf:
    total += (optimized_fm(n, d, k, projected) + layer_norm(n * k)
              + mlp(n * k, mlp_units, nf * d, act=act))
  if nl:
    total += 2 * n * nl * d
  m = nf + nl
  if n != m:
    total += 2 * n * m * d  # projection residual
  return total + m * d + m * layer_norm(d)  # residual add, LayerNorm per embedding


def _wukong(m: Wukong) -> Breakdown:
  d = m.embedding_dim
  emb, n = _embed_with_dense(m)
  b = {'embedding': emb}
  for i in range(m.num_layers):
    b[f'layer_{i}'] = wukong_layer(n, d, m.num_fm_embeddings, m.num_lcb_embeddings, m.fm_rank,
                                   m.fmb_mlp_units, m.fm_projection == 'projected', m.activation)
    n = m.num_fm_embeddings + m.num_lcb_embeddings
  b['top_mlp'] = mlp(n * d, m.top_mlp_units, 1, m.batch_norm, m.activation)
  return b


def attention_encoder(n: int, d: int, heads: int, ffn: int, act) -> int:
  """``SelfAttentionEncoder`` on ``n`` tokens of width ``d``."""
  qkv = 3 * (2 * n * d * d + n * d)
  scores = 2 * n * n * d + n * n * heads + softmax(n) * n * heads  # q k^T, / sqrt(dh), softmax
  mix = 2 * n * n * d + 2 * n * d * d + n * d  # weights @ v, output projection + bias
  ffn_cost = n * mlp(d, (ffn,), d, act=act)
  return qkv + scores + mix + ffn_cost + 2 * n * d + 2 * n * layer_norm(d)


def dhen_module(kind: str, n: int, d: int, m: int, model: DHEN) -> int:
  """One DHEN module producing ``m`` embeddings from ``n``."""
  if kind == 'dot':
    return 2 * n * n * d + dense(n * (n - 1) // 2, m * d)
  if kind == 'attention':
    return (attention_encoder(n, d, model.num_heads, model.ffn_units or 4 * d, model.activation)
            + 2 * n * m * d)
  if kind == 'cross':
    return model.cross_layers * cross_layer(n * d) + dense(n * d, m * d)
  if kind == 'linear':
    return 2 * n * m * d
  if kind == 'conv':
    kh, kw = model.conv_kernel
    c = model.conv_channels
    return (2 * kh * kw * c * n * d + n * d * c + activation(n * d * c, model.activation)
            + dense(n * d * c, m * d))
  raise ValueError(f'dhen_module: unknown module {kind!r}')


def _dhen(model: DHEN) -> Breakdown:
  d, m = model.embedding_dim, model.num_embeddings
  emb, n = _embed_with_dense(model)
  b = {'embedding': emb}
  for i, kinds in enumerate(model.layers):
    total = sum(dhen_module(kind, n, d, m, model) for kind in kinds)
    num = len(kinds)
    if model.ensemble == 'concat':
      out = num * m
    else:
      out = m
      total += (num - 1) * m * d if model.ensemble == 'sum' else 2 * num * m * d
    if model.shortcut == 'projection':
      total += 2 * n * out * d
    total += out * d + out * layer_norm(d)
    b[f'layer_{i}'] = total
    n = out
  b['top_mlp'] = mlp(n * d, model.top_mlp_units, 1, model.batch_norm, model.activation)
  return b


def _decoder_lm(m: DecoderLM) -> Breakdown:
  """One example is one sequence of ``schema.seq_len`` tokens (matmul FLOPs only; see
  ``mixed_modal_lm_flops_breakdown``)."""
  return mixed_modal_lm_flops_breakdown(m.lm(), m.schema.seq_len)


COUNTERS: dict[type[nn.Module], Callable[[nn.Module], Breakdown]] = {
    LR: _lr, FM: _fm, DeepFM: _deepfm, DLRM: _dlrm, DCNv2: _dcnv2, Wukong: _wukong, DHEN: _dhen,
    CNN: vision_flops_breakdown, ResNet: vision_flops_breakdown, DecoderLM: _decoder_lm}


def flops_breakdown(model: nn.Module) -> Breakdown:
  """Per-example forward FLOPs of ``model`` by component (``{name: flops}``).

  Raises:
    TypeError: a model type with no counter (the message lists the supported ones).
  """
  counter = COUNTERS.get(type(model))
  if counter is None:
    raise TypeError(f'no FLOP counter for {type(model).__name__}; supported: '
                    f'{sorted(c.__name__ for c in COUNTERS)}')
  return {k: int(v) for k, v in counter(model).items()}


def per_example_flops(model: nn.Module) -> int:
  """Per-example forward FLOPs of ``model`` (2 per multiply-add; module docstring)."""
  return sum(flops_breakdown(model).values())


def config_flops(name: str, schema: FeatureSchema, embedding_dim: int = 10, **model_kwargs) -> int:
  """Per-example forward FLOPs of ``build_model(name, schema, embedding_dim=..., **kwargs)``."""
  from jaxrec.models import build_model  # pylint: disable=g-import-not-at-top  (no cycle)
  return per_example_flops(build_model(name, schema, embedding_dim=embedding_dim, **model_kwargs))


def training_config_flops(config, schema: FeatureSchema) -> int:
  """Per-example forward FLOPs of a training ``ConfigDict`` (``model``, ``embedding_dim``,
  ``model_kwargs``) on ``schema``."""
  kwargs = dict(config.get('model_kwargs', {}) or {})
  return config_flops(config.model, schema, config.embedding_dim, **kwargs)

