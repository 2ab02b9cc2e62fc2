"""How the sharding code plugs into a train step, without knowing the trainer.

The train steps (``jaxrec.train.state``) take a ``ForwardHooks`` (the GSPMD FSDP implementation
fills one in, ``fsdp.make_gspmd_hooks``) or a whole ``LossAndGrad`` (the explicit shard_map one,
``shard_map_fsdp.make_shard_map_loss_and_grad``). Both are defined here, below ``jaxrec.train``,
so the sharding code never imports the trainer (imports run one way; see STYLE.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

PyTree = Any

# (state, batch, dropout_rng) -> ((loss, (data_loss, reg_loss, new_batch_stats)), grads), where
# ``state`` is a ``jaxrec.train.state.TrainState``.
LossAndGrad = Callable[[Any, dict, jax.Array], tuple[tuple[jax.Array, tuple], PyTree]]


def _identity(x):
  return x


def _no_prepare(params, feats):
  return params, feats


@dataclasses.dataclass(frozen=True)
class ForwardHooks:
  """Where the sharding code plugs into the forward and backward pass; the defaults change nothing.

  Attributes:
    cast_params: state params -> the params that are differentiated (outside the forward pass,
      e.g. a cast to a low-precision dtype; the gradients come back in that dtype and layout).
    prepare: ``(params, features) -> (params, features)`` at the start of the forward pass, inside
      the rematerialised region (e.g. the FSDP all-gather of parameter shards, casting float
      inputs).
    checkpoint: forward function -> forward function (e.g. ``jax.checkpoint`` with a policy).
    reduce_grads: gradients -> the gradients the optimizer sees (e.g. cast to the reduction dtype,
      constrain to the sharded layout, cast back to the parameters' dtype).
  """
  cast_params: Callable[[PyTree], PyTree] = _identity
  prepare: Callable[[PyTree, dict], tuple[PyTree, dict]] = _no_prepare
  checkpoint: Callable[[Callable], Callable] = _identity
  reduce_grads: Callable[[PyTree], PyTree] = _identity
