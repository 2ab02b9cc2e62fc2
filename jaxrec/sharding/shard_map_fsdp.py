"""FULL_SHARD (and HYBRID_SHARD) with explicit collectives: ``jax.shard_map`` instead of GSPMD.

The same plan and boxes as the GSPMD implementation (``jaxrec.sharding.fsdp``), but every
collective is written out, so it can be read, counted and changed:

* each device holds its shard of every parameter; the forward pass of a unit (every parameter
  outside a scanned stack up front, then one layer at a time inside the stack's scan) calls
  ``gather``: ``all_gather`` over the sharding axes in ``param_dtype``;
* ``gather``'s custom backward is ``psum_scatter`` (a reduce-scatter) of the gradient, in
  ``reduce_dtype``, back onto the shard (a parameter kept whole gets a ``psum``); with a remat
  policy the forward is recomputed in the backward pass and the all-gather issued again, so the
  gathered weights never live from the forward to the backward pass;
* gradients are then summed over the replica axes (``data``, and ``host`` for HYBRID_SHARD) with
  ``psum``; the loss is the global weighted mean (local sum over the ``psum`` of the weights).

Only the loss and gradient run inside ``shard_map``; the regularizer and the optimizer update stay
in GSPMD (elementwise on the shards, no collectives but the gradient-norm scalar).

Limits: no tensor parallelism (non-batch mesh axes must have size 1), no BatchNorm (its batch
statistics would be per device), and dropout draws differ from the GSPMD / single-device run (the
key is folded with the device's batch index); the verification tests use dropout 0.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from jaxrec.sharding.fsdp import (StatePlan, box_layouts, remat_wrapper, shard_axes, to_pspec,
                                  with_gather_hooks)
from jaxrec.sharding.hooks import LossAndGrad


def _explicit_gather_fn(plan: StatePlan):
  """Box of a local shard -> the whole parameter (all_gather); backward: psum_scatter / psum."""
  mp = plan.config.mixed_precision
  strategy, mesh = plan.config.strategy, plan.mesh
  axes = shard_axes(strategy, 'params', mesh)

  def gather_one(box: nn.Partitioned) -> jax.Array:
    stored, _, _ = box_layouts(box, strategy, mesh)
    dims = [d for d, t in enumerate(stored) if set(t) & set(axes)]
    master = box.value.dtype
    dim = dims[0] if dims else None
    ax = tuple(a for a in stored[dim] if a in axes) if dims else axes

    @jax.custom_vjp
    def gather(x):
      x = x.astype(mp.param_dtype)
      if dim is None:
        return x
      return jax.lax.all_gather(x, ax, axis=dim, tiled=True)

    def fwd(x):
      return gather(x), None

    def bwd(_, g):
      g = g.astype(mp.reduce_dtype)
      if dim is None:
        g = jax.lax.psum(g, ax) if ax else g
      else:
        g = jax.lax.psum_scatter(g, ax, scatter_dimension=dim, tiled=True)
      return (g.astype(master),)

    gather.defvjp(fwd, bwd)
    return gather(box.value)

  return gather_one


def make_shard_map_loss_and_grad(plan: StatePlan, model: nn.Module,
                                 regularizer: Callable[[Any], jax.Array],
                                 features: Callable[[dict], dict]) -> LossAndGrad:
  """The explicit-collective ``loss_and_grad`` for ``jaxrec.train.state.make_train_step``.

  Args:
    plan: the state's plan (``fsdp.plan_state``).
    model: the model (its per-layer gather is set here if it takes one).
    regularizer: ``params -> scalar`` regularization loss (the trainer passes
      ``jaxrec.train.state.regularization`` with the plan's mask and its optimizer config); it and
      its gradient are computed in GSPMD, outside the shard_map.
    features: ``batch -> model inputs`` (``jaxrec.train.state.features``).

  Raises:
    ValueError: a non-batch mesh axis has more than one device (tensor parallelism), or the model
      has BatchNorm statistics.
  """
  mesh, strategy = plan.mesh, plan.config.strategy
  other = [a for a in mesh.axis_names if a not in plan.batch_axes and mesh.shape[a] > 1]
  if other:
    raise ValueError(f"implementation='shard_map' shards over the batch axes only; mesh axes "
                     f'{other} have more than one device (use the GSPMD implementation)')
  if jax.tree.leaves(plan.abstract.batch_stats):
    raise ValueError("implementation='shard_map' does not support BatchNorm (batch statistics "
                     'would be per device); use the GSPMD implementation')
  g_axes = shard_axes(strategy, 'grads', mesh)
  replica_axes = tuple(a for a in plan.batch_axes if a not in g_axes)
  batch_axes = plan.batch_axes
  model, prepare = with_gather_hooks(model, _explicit_gather_fn(plan), plan)
  checkpoint = remat_wrapper(plan.config.remat_policy)
  param_specs = jax.tree.map(to_pspec, plan.param_dims)
  grad_specs = jax.tree.map(to_pspec, plan.grad_dims)
  rows = P(batch_axes)

  def local(params, feats, label, weight, rng):
    index = jnp.zeros((), jnp.int32)
    for a in batch_axes:
      index = index * mesh.shape[a] + jax.lax.axis_index(a)
    rng = jax.random.fold_in(rng, index)

    def forward(p, f):
      p, f = prepare(p, f)
      return model.apply({'params': p}, f, train=True, rngs={'dropout': rng})

    forward = checkpoint(forward)
    total_weight = jax.lax.stop_gradient(jax.lax.psum(jnp.sum(weight), batch_axes))

    def data_loss(p):
      per_row = optax.sigmoid_binary_cross_entropy(forward(p, feats), label)
      return jnp.sum(per_row * weight) / jnp.maximum(total_weight, 1.0)

    loss, grads = jax.value_and_grad(data_loss)(params)
    if replica_axes:
      grads = jax.lax.psum(grads, replica_axes)
    return jax.lax.psum(loss, batch_axes), grads

  sharded = jax.shard_map(local, mesh=mesh, in_specs=(param_specs, rows, rows, rows, P()),
                          out_specs=(P(), grad_specs), check_vma=False)

  def loss_and_grad(state, batch, dropout_rng):
    data_loss, grads = sharded(state.params, features(batch), batch['label'], batch['weight'],
                               dropout_rng)
    reg, reg_grads = jax.value_and_grad(regularizer)(state.params)
    grads = jax.tree.map(jnp.add, grads, reg_grads)
    return (data_loss + reg, (data_loss, reg, {})), grads

  return loss_and_grad
