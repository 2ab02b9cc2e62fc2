"""A pre-LayerNorm transformer block stack over sequences ``[batch, length, embed]``.

Written small and generic so that the FSDP verification, the field-transformer CTR model and later
LM / multimodal work share it::

  block(x) = x + Dropout(Attention(LN(x)))                  # multi-head self-attention
  block(x) = x + Dropout(W_out act(W_in LN(x) + b_in) + b_out)

``TransformerStack`` runs ``num_layers`` blocks, scanned (``scan_layers=True``: one compiled body,
parameters stacked on a leading ``'layers'`` axis; flat memory and compile time in the depth) or
unrolled (``layer_0``, ``layer_1``, ...), each optionally rematerialised with a named policy
(``REMAT_POLICIES``), then a final LayerNorm.

Logical axes (mapped to mesh axes by the rules table of ``jaxrec.sharding``):

=============  =================================================================================
``embed``      model width ``D``: q/k/v kernels ``('embed', 'heads', 'kv')``, output kernel
               ``('heads', 'kv', 'embed')``, MLP kernels ``('embed', 'mlp')`` / ``('mlp', 'embed')``,
               LayerNorm scale/bias and the MLP output bias ``('embed',)``.
``heads``      attention heads ``H``; q/k/v biases ``('heads', 'kv')``.
``kv``         width of one head ``K``.
``mlp``        MLP hidden width; its bias ``('mlp',)``.
``layers``     the stacked-layer axis of a scanned stack (first dimension of every block
               parameter).
=============  =================================================================================

Activations are annotated ``('batch', 'length', 'embed')`` after every block with
``nn.with_logical_constraint``: a no-op unless the caller binds logical axis rules (and a mesh).

``layer_param_fn`` (optional) is applied to each block's parameters before the block uses them,
inside the scan and the remat region: ``jaxrec.sharding`` passes an FSDP all-gather here so that
parameters are gathered one layer at a time in the forward pass and again in the backward pass
(never held for the whole model).

Example::

  stack = TransformerStack(num_layers=4, num_heads=4, head_dim=16, mlp_dim=256)
  variables = stack.init(key, x)            # x: [batch, length, 64]
  y = stack.apply(variables, x, mask)       # [batch, length, 64]; mask: bool [batch, length]
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.layers.mlp import Activation, get_activation

PyTree = Any

# Activation-checkpointing policies by name (a config names one; see jax.checkpoint_policies).
# 'none' disables rematerialisation; every other entry rematerialises with that saving policy.
REMAT_POLICIES: dict[str, Optional[Callable[..., bool]]] = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,  # recompute everything in the backward
    'dots': jax.checkpoint_policies.dots_saveable,  # keep matmul outputs
    'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'everything': jax.checkpoint_policies.everything_saveable,  # remat boundary only
}


def check_remat_policy(name: str, argument: str = 'remat_policy') -> str:
  """Returns ``name`` if it is a key of ``REMAT_POLICIES``; else a ValueError naming ``argument``."""
  if name not in REMAT_POLICIES:
    raise ValueError(f'{argument}={name!r} is not a remat policy; valid: {sorted(REMAT_POLICIES)}')
  return name


def wrap_block(block: type[nn.Module], layer_param_fn: Optional[Callable[[PyTree], PyTree]],
               remat_policy: str, scanned: bool, initializing: bool) -> type[nn.Module]:
  """A block class with its per-layer parameter map applied (``layer_param_fn``, e.g. the FSDP
  gather; not while initialising) and rematerialised by ``remat_policy``: the wrapping every
  stack of blocks (this one, the decoder LM's) does before it scans or unrolls them."""
  if layer_param_fn is not None and not initializing:
    block = nn.map_variables(block, 'params', trans_in_fn=layer_param_fn)
  if remat_policy != 'none':
    block = nn.remat(block, policy=REMAT_POLICIES[remat_policy], prevent_cse=not scanned)
  return block


class _Linear(nn.Module):
  """``y = x . W + b`` contracting the last ``num_in`` dims of ``x`` with the first of ``W``.

  ``W``: ``x.shape[-num_in:] + out_shape`` (Xavier normal with those fans), ``b``: ``out_shape``.
  (``nn.DenseGeneral`` builds multi-dimensional kernels by reshaping a boxed 2-D draw, which
  breaks under bound logical-axis rules; this creates them at their real shape.)
  """
  out_shape: tuple[int, ...]
  num_in: int
  kernel_axes: tuple[str, ...]
  bias_axes: tuple[str, ...]
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n_in, n_out = self.num_in, len(self.out_shape)
    init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal',
                                            in_axis=tuple(range(n_in)),
                                            out_axis=tuple(range(n_in, n_in + n_out)))
    kernel = self.param('kernel', nn.with_logical_partitioning(init, self.kernel_axes),
                        tuple(x.shape[-n_in:]) + tuple(self.out_shape), jnp.float32)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                           self.bias_axes),
                      tuple(self.out_shape), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = jnp.tensordot(x, kernel, axes=(tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))))
    return y + bias


def _layer_norm(dtype, name):
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                              ('embed',)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                             ('embed',)))


class TransformerBlock(nn.Module):
  """One pre-LayerNorm block: self-attention then MLP, each residual.

  Attributes:
    num_heads: ``H``.
    head_dim: ``K``.
    mlp_dim: MLP hidden width.
    dropout_rate: dropout on the attention output and on the MLP output.
    causal: mask attention to positions ``<=`` the query's.
    activation: MLP activation (a name in ``jaxrec.layers.mlp.ACTIVATIONS`` or a callable).
    deterministic: no dropout (inference); dropout needs a ``'dropout'`` rng otherwise.
    dtype: computation dtype (None: promote inputs and parameters).

  Call:
    x: ``[batch, length, D]``; mask: optional ``bool [batch, length]`` (True = real token).

  Returns:
    ``[batch, length, D]``.
  """
  num_heads: int
  head_dim: int
  mlp_dim: int
  dropout_rate: float = 0.0
  causal: bool = False
  activation: Activation = 'gelu'
  deterministic: bool = True
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    d, h, k = x.shape[-1], self.num_heads, self.head_dim
    y = _layer_norm(self.dtype, 'ln_attn')(x)
    qkv = [_Linear((h, k), 1, ('embed', 'heads', 'kv'), ('heads', 'kv'), self.dtype, name=n)(y)
           for n in ('query', 'key', 'value')]  # 3 x [B, L, H, K]
    q, kk, v = qkv
    logits = jnp.einsum('blhk,bmhk->bhlm', q, kk) / jnp.sqrt(k).astype(q.dtype)  # [B, H, L, L]
    allowed = None
    if mask is not None:
      allowed = mask[:, None, None, :]  # [B, 1, 1, L]
    if self.causal:
      length = x.shape[1]
      tri = jnp.tril(jnp.ones((length, length), bool))[None, None]
      allowed = tri if allowed is None else allowed & tri
    if allowed is not None:
      logits = jnp.where(allowed, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    attn = jnp.einsum('bhlm,bmhk->blhk', weights, v)  # [B, L, H, K]
    attn = _Linear((d,), 2, ('heads', 'kv', 'embed'), ('embed',), self.dtype, name='out')(attn)
    x = x + nn.Dropout(self.dropout_rate, deterministic=self.deterministic)(attn)
    y = _layer_norm(self.dtype, 'ln_mlp')(x)
    y = _Linear((self.mlp_dim,), 1, ('embed', 'mlp'), ('mlp',), self.dtype, name='mlp_in')(y)
    y = get_activation(self.activation)(y)
    y = _Linear((d,), 1, ('mlp', 'embed'), ('embed',), self.dtype, name='mlp_out')(y)
    x = x + nn.Dropout(self.dropout_rate, deterministic=self.deterministic)(y)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class _ScanBlock(TransformerBlock):
  """A block with the ``(carry, output)`` signature ``nn.scan`` needs."""

  def __call__(self, x, mask=None):  # pylint: disable=arguments-renamed
    return super().__call__(x, mask), None


class TransformerStack(nn.Module):
  """``num_layers`` transformer blocks and a final LayerNorm.

  Attributes:
    num_layers: number of blocks.
    num_heads, head_dim, mlp_dim, dropout_rate, causal, activation: see ``TransformerBlock``.
    scan_layers: scan one block body over stacked parameters (leading ``'layers'`` axis) instead
      of unrolling ``layer_{i}`` submodules.
    remat_policy: a key of ``REMAT_POLICIES``: rematerialise each block in the backward pass,
      saving only what the policy allows ('none': no remat).
    dtype: computation dtype (None: promote inputs and parameters).
    layer_param_fn: optional map applied to each block's ``params`` before use (inside the remat
      region and the scan body), e.g. an FSDP all-gather; parameters may arrive boxed
      (``nn.Partitioned``) and it must return them in a form ``self.param`` accepts.

  Call:
    x: ``[batch, length, D]``; mask: optional ``bool [batch, length]``; train: dropout on.

  Returns:
    ``[batch, length, D]``.
  """
  num_layers: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  dropout_rate: float = 0.0
  causal: bool = False
  activation: Activation = 'gelu'
  scan_layers: bool = True
  remat_policy: str = 'none'
  dtype: Optional[Any] = None
  layer_param_fn: Optional[Callable[[PyTree], PyTree]] = None

  def __post_init__(self):
    for name in ('num_layers', 'num_heads', 'head_dim', 'mlp_dim'):
      value = getattr(self, name)
      if int(value) != value or value < 1:
        raise ValueError(f'TransformerStack: {name} must be a positive int, got {value!r}')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'TransformerStack: dropout_rate must be in [0, 1), got '
                       f'{self.dropout_rate!r}')
    check_remat_policy(self.remat_policy, 'TransformerStack remat_policy')
    get_activation(self.activation, 'TransformerStack activation')
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None,
               train: bool = False) -> jax.Array:
    block = wrap_block(_ScanBlock if self.scan_layers else TransformerBlock, self.layer_param_fn,
                       self.remat_policy, self.scan_layers, self.is_initializing())
    kwargs = dict(num_heads=self.num_heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim,
                  dropout_rate=self.dropout_rate, causal=self.causal,
                  activation=self.activation, deterministic=not train, dtype=self.dtype)
    if self.scan_layers:
      stack = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True,
                                                                       'dropout': True},
                      in_axes=nn.broadcast, length=self.num_layers,
                      metadata_params={nn.PARTITION_NAME: 'layers'})
      x, _ = stack(name='layers', **kwargs)(x, mask)
    else:
      for i in range(self.num_layers):
        x = block(name=f'layer_{i}', **kwargs)(x, mask)
    return _layer_norm(self.dtype, 'ln_final')(x)
