"""Expert parallelism for MoMa's expert-choice FFN: experts split over an ``'expert'`` mesh axis,
tokens dispatched to them and combined back with explicit ``all_to_all`` (``jax.shard_map``).

``expert_parallel_dispatch(mesh)`` returns a ``dispatch_fn`` for ``jaxrec.layers.moe``
(``ExpertChoiceFFN`` / ``MoMaBlock`` / ``MixedModalLM`` / ``DecoderLM``): the same function as
``moe.local_dispatch``,

  ``y[n] = sum over (e, k) with index[e, k] == n of weight[e, k] * SwiGLU_e(x[n])``,

computed with each device holding ``E / P_e`` experts and ``N / P_t`` of the tokens. The routing
itself (the router, the global top-``C`` per expert over the WHOLE batch) stays outside, in
GSPMD: ``index`` and ``weight`` reach every device whole, so every device knows where every
chosen token lives and where it goes.

Layout (``P_e``: devices of the expert axis; ``P_r``: devices of the other token axes, e.g.
``data`` / ``fsdp``, the replicas of each expert; ``P_t = P_r P_e``)::

  x       [N, D]      rows split over token_axes (P_t contiguous blocks, the expert axis minor:
                      block q = r P_e + j lives on the device with replica index r, expert index j)
  index   [E, C]      int, replicated        weight [E, C] replicated
  gate/up [E, D, F]   split over the expert axis on E (replicated over the replica axes)
  down    [E, F, D]   split over the expert axis on E
  y       [N, D]      rows split like x

Scheme, on device ``(r, j)`` (static shapes throughout; ``n_b = N / P_t`` tokens per block):

1. ``all_gather`` over the replica axes (skipped when ``P_r = 1``): the tokens of every block
   ``(r', j)``, ``[P_r n_b, D]``.
2. The slots are split among the replicas: replica ``r`` handles the slot columns
   ``k in [r C_r, (r + 1) C_r)``, ``C_r = ceil(C / P_r)`` (``index`` padded with empty slots).
3. Send buffer ``[E, C_r, D]``: slot ``(e, k)`` holds ``x[index[e, k]]`` if that token is in
   one of this device's gathered blocks (its expert index is ``j``), else 0. ``all_to_all`` over
   the expert axis sends expert block ``j'`` to device ``(r, j')``; the receiver sums the ``P_e``
   buffers it gets (exactly one source holds each slot's token) into ``[E / P_e, C_r, D]``.
4. Its experts' SwiGLU on those slots (a batched matmul, ``E C_r / P_e`` token passes: the
   expert FLOPs split evenly over all ``P_t`` devices).
5. The outputs go back with a second ``all_to_all``, to each source only the slots it owns; the
   source multiplies them by ``weight`` and scatter-adds them to its tokens, ``[P_r n_b, D]``.
6. ``psum_scatter`` over the replica axes (skipped when ``P_r = 1``) hands every token's sum back
   to the device that holds it: ``y`` ``[n_b, D]`` per device.

Communication per device per call, in elements of ``x``'s dtype (the backward pass moves the same
again: the transposes are ``psum_scatter`` <-> ``all_gather`` and ``all_to_all``):

* each ``all_to_all``: a ``[E, C_r, D]`` buffer, ``(P_e - 1) / P_e`` of it leaving the device:
  ``E C D (P_e - 1) / (P_r P_e)`` when ``P_r`` divides ``C``. Static shapes send every slot of
  the chunk to every expert device (zeros where the source does not own the token), so this is
  ``P_e`` times the ``E C D / P_t`` that a variable-size (bucketed) exchange of only the chosen
  tokens would send, in exchange for exactness and no capacity overflow;
* the ``all_gather`` and the ``psum_scatter``: ``(P_r - 1) n_b D`` each.

Expert choice makes the number of tokens a device sends to an expert data-dependent (anything
from 0 to ``C`` per expert), which is why the buffers are dense rather than bucketed.

The shard_map is manual over every mesh axis: mesh axes other than the token axes must have size
1 (tensor parallelism inside the experts is not implemented; ``ValueError`` otherwise).

Example::

  mesh = make_mesh({'data': 1, 'fsdp': 1, 'expert': 8})
  model = DecoderLM(schema, ffn='moe', experts_per_group=(8, 8),
                    dispatch_fn=expert_parallel_dispatch(mesh))

``with_expert_parallel`` (called by ``jaxrec.sharding.fsdp``) does this for the trainer when the
mesh's expert axis has more than one device.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from jaxrec.layers.moe import DispatchFn
from jaxrec.sharding import rules as rules_lib

EXPERT_AXIS = rules_lib.EXPERT


def expert_axis_size(mesh: Mesh, axis: str = EXPERT_AXIS) -> int:
  """Devices along ``axis`` of ``mesh`` (1 when the mesh has no such axis)."""
  return int(mesh.shape[axis]) if axis in mesh.axis_names else 1


def _token_axes(mesh: Mesh, axis: str, token_axes: Optional[Sequence[str]]) -> tuple[str, ...]:
  """The mesh axes the tokens are split over, ``axis`` last (checked)."""
  if token_axes is None:
    token_axes = [a for a in rules_lib.BATCH_MESH_AXES if a in mesh.axis_names and a != axis]
    token_axes = tuple(token_axes) + (axis,)
  token_axes = tuple(token_axes)
  missing = [a for a in token_axes if a not in mesh.axis_names]
  if missing:
    raise ValueError(f'expert_parallel_dispatch: token axes {missing} are not mesh axes '
                     f'{mesh.axis_names}')
  if not token_axes or token_axes[-1] != axis or len(set(token_axes)) != len(token_axes):
    raise ValueError(f'expert_parallel_dispatch: token_axes {token_axes} must be distinct and end '
                     f'with the expert axis {axis!r} (a block of tokens per expert device, the '
                     f'expert index minor)')
  other = [a for a in mesh.axis_names if a not in token_axes and mesh.shape[a] > 1]
  if other:
    raise ValueError(f'expert_parallel_dispatch: mesh axes {other} have more than one device but '
                     f'do not split the tokens; expert parallelism runs over the token axes '
                     f'{token_axes} only (no tensor parallelism inside the experts)')
  return token_axes


def _swiglu(x: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array) -> jax.Array:
  """``x [E, T, D]`` through expert ``e``'s SwiGLU (kernels ``[E, D, F]`` / ``[E, F, D]``)."""
  h = nn.silu(jnp.einsum('etd,edf->etf', x, gate)) * jnp.einsum('etd,edf->etf', x, up)
  return jnp.einsum('etf,efd->etd', h, down)


def _linear_index(axes: Sequence[str], mesh: Mesh) -> jax.Array:
  """This device's index over ``axes`` (row-major, as a PartitionSpec splits rows)."""
  index = jnp.zeros((), jnp.int32)
  for a in axes:
    index = index * mesh.shape[a] + jax.lax.axis_index(a)
  return index


def expert_parallel_dispatch(mesh: Mesh, axis: str = EXPERT_AXIS,
                             token_axes: Optional[Sequence[str]] = None) -> DispatchFn:
  """A ``dispatch_fn`` that runs the experts split over mesh axis ``axis`` (module docstring).

  Args:
    mesh: the device mesh (it must have ``axis``).
    axis: the mesh axis the experts are split over.
    token_axes: the mesh axes the tokens (the batch rows) are split over, ending with ``axis``;
      default: the mesh's batch axes (``rules.BATCH_MESH_AXES``: host, data, fsdp, expert).
      Results do not depend on it (shard_map reshards ``x`` to it), only the traffic does.

  Returns:
    ``dispatch(x [N, D], index int [E, C], weight [E, C], gate [E, D, F], up [E, D, F],
    down [E, F, D]) -> y [N, D]``, equal to ``moe.local_dispatch``. Raises ValueError (at trace
    time) when ``E`` is not a multiple of the expert axis size or ``N`` of the token devices.
  """
  if axis not in mesh.axis_names:
    raise ValueError(f'expert_parallel_dispatch: mesh axes {mesh.axis_names} have no expert axis '
                     f'{axis!r}')
  token_axes = _token_axes(mesh, axis, token_axes)
  replica_axes = tuple(a for a in token_axes[:-1] if mesh.shape[a] > 1)  # collectives skip size 1
  p_e = int(mesh.shape[axis])
  p_r = math.prod(int(mesh.shape[a]) for a in replica_axes)

  def dispatch(x, index, weight, gate, up, down):
    n, d = x.shape
    e, c = index.shape
    if e % p_e:
      raise ValueError(f'expert_parallel_dispatch: {e} experts do not split over the {p_e} '
                       f'devices of mesh axis {axis!r}; make the experts of every group a '
                       f'multiple of {p_e}')
    if n % (p_r * p_e):
      raise ValueError(f'expert_parallel_dispatch: {n} tokens do not split over the {p_r * p_e} '
                       f'devices of token axes {token_axes}; make the batch a multiple of the '
                       f'token devices')
    if gate.shape[0] != e or up.shape[0] != e or down.shape[0] != e:
      raise ValueError(f'expert_parallel_dispatch: index has {e} experts, kernels '
                       f'{gate.shape} / {up.shape} / {down.shape}')
    chunk = -(-c // p_r)  # C_r: slot columns per replica
    if chunk * p_r != c:  # empty slots: token n (no one's), weight 0
      pad = ((0, 0), (0, chunk * p_r - c))
      index = jnp.pad(index, pad, constant_values=n)
      weight = jnp.pad(weight, pad)
    local = functools.partial(_local_dispatch, mesh=mesh, axis=axis, replica_axes=replica_axes,
                              num_tokens=n, chunk=chunk)
    rows = P(token_axes, None)
    mapped = jax.shard_map(local, mesh=mesh,
                           in_specs=(rows, P(), P(), P(axis), P(axis), P(axis)),
                           out_specs=rows, check_vma=True)
    return mapped(x, index.astype(jnp.int32), weight, gate, up, down)

  return dispatch


def _local_dispatch(x, index, weight, gate, up, down, *, mesh: Mesh, axis: str,
                    replica_axes: tuple[str, ...], num_tokens: int, chunk: int):
  """One device's part (module docstring, steps 1-6). ``x [n_b, D]``, ``index`` / ``weight``
  ``[E, P_r C_r]`` (padded, whole), kernels ``[E / P_e, ...]``; returns ``y [n_b, D]``."""
  p_e = mesh.shape[axis]
  n_b, d = x.shape
  e_local = gate.shape[0]
  e = e_local * p_e
  j = jax.lax.axis_index(axis)
  r = _linear_index(replica_axes, mesh)
  # 1. this expert column's tokens of every replica: block r' at rows [r' n_b, (r' + 1) n_b).
  xs = jax.lax.all_gather(x, replica_axes, axis=0, tiled=True) if replica_axes else x
  held = xs.shape[0]
  # 2. this replica's slot columns.
  index = jax.lax.dynamic_slice_in_dim(index, r * chunk, chunk, axis=1)  # [E, C_r]
  weight = jax.lax.dynamic_slice_in_dim(weight, r * chunk, chunk, axis=1)
  block = index // n_b  # the token's block q = r' P_e + j'
  owner = block % p_e  # the expert index j' of the device that holds it
  valid = index < num_tokens
  own = valid & (owner == j)  # [E, C_r]: slots whose token this device holds
  position = jnp.where(own, (block // p_e) * n_b + index % n_b, held)  # row in xs (held: none)
  # 3. dispatch: [E, C_r, D] -> expert block j' to device j'; one source per slot is non-zero.
  send = jnp.take(xs, position, axis=0, mode='fill', fill_value=0)
  received = jax.lax.all_to_all(send, axis, 0, 0, tiled=True)  # [P_e * E / P_e, C_r, D]
  tokens = received.reshape(p_e, e_local, chunk, d).sum(0)  # [E / P_e, C_r, D]
  # 4. this device's experts.
  out = _swiglu(tokens, gate, up, down)  # [E / P_e, C_r, D]
  # 5. combine: each source gets back the outputs of the slots it owns.
  mine = jax.lax.dynamic_slice_in_dim(owner, j * e_local, e_local, axis=0)  # [E / P_e, C_r]
  to = mine[None] == jnp.arange(p_e)[:, None, None]  # [P_e, E / P_e, C_r]
  back = jnp.where(to[..., None], out[None], 0).reshape(e, chunk, d)
  back = jax.lax.all_to_all(back, axis, 0, 0, tiled=True)  # [E, C_r, D]: expert e's output
  back = back * weight[..., None].astype(back.dtype)
  y = jnp.zeros((held, d), back.dtype).at[position.reshape(-1)].add(
      back.reshape(-1, d), mode='drop')
  # 6. every token's sum to the device that holds it.
  if replica_axes:
    y = jax.lax.psum_scatter(y, replica_axes, scatter_dimension=0, tiled=True)
  return y


def has_dispatch_hook(model: nn.Module) -> bool:
  """Whether ``model`` takes a ``dispatch_fn`` (MoMa's expert dispatch)."""
  return dataclasses.is_dataclass(model) and any(
      f.name == 'dispatch_fn' for f in dataclasses.fields(model))


def check_expert_parallel(mesh: Mesh, model: Optional[nn.Module], param_names: Any,
                          implementation: str = 'gspmd') -> bool:
  """Whether ``mesh`` asks for expert parallelism (an expert axis of more than one device);
  raises ValueError for a combination that cannot honour it.

  ``param_names``: the model's logical axis names per parameter (any tree whose leaves are
  tuples of names). Errors: the shard_map FSDP implementation, a model without expert parameters
  (logical axis ``'expert'``), or one whose experts take no ``dispatch_fn``.
  """
  size = expert_axis_size(mesh)
  if size == 1:
    return False
  where = f'mesh axis {EXPERT_AXIS!r} has {size} devices (expert parallelism)'
  if implementation != 'gspmd':
    raise ValueError(f"{where}, which sharding implementation={implementation!r} does not "
                     f"support; use implementation='gspmd'")
  leaves = jax.tree.leaves(param_names, is_leaf=lambda x: isinstance(x, tuple))
  if not any(EXPERT_AXIS in tuple(names) for names in leaves):
    raise ValueError(f"{where}, but the model has no expert parameters (logical axis "
                     f"{EXPERT_AXIS!r}); use a MoE model (e.g. decoder_lm with ffn='moe') or "
                     f"set the expert axis to 1")
  if model is not None and not has_dispatch_hook(model):
    raise ValueError(f'{where}, but {type(model).__name__} takes no dispatch_fn; expert '
                     f"parallelism runs MoMa's expert-choice FFN (decoder_lm with ffn='moe')")
  return True


def with_expert_parallel(model: nn.Module, mesh: Mesh, param_names: Any,
                         implementation: str = 'gspmd') -> nn.Module:
  """``model`` with ``dispatch_fn=expert_parallel_dispatch(mesh)`` when the mesh's expert axis
  has more than one device (unchanged otherwise, or when the model already has a dispatch_fn);
  errors as ``check_expert_parallel``."""
  if not check_expert_parallel(mesh, model, param_names, implementation):
    return model
  if model.dispatch_fn is not None:
    return model
  return model.clone(dispatch_fn=expert_parallel_dispatch(mesh))
