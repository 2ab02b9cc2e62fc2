"""Shared pieces of the sharding tests: tiny models, batches, the single-device reference run."""

import jax
import numpy as np

from jaxrec.data.schema import one_hot_schema
from jaxrec.sharding.fsdp import ShardingConfig
from jaxrec.sharding.mesh import make_hierarchical_mesh, make_mesh
from jaxrec.train.sharded_trainer import ShardedTrainer
from jaxrec.train import state as state_lib

# Vocabularies divisible by 8, so FULL_SHARD over 8 devices needs no fallback.
SCHEMA = one_hot_schema(['a', 'b', 'c', 'd'], [16, 24, 32, 40])
OPTIM = state_lib.OptimConfig(learning_rate=1e-3, max_grad_norm=10.0,  # BARS default lr
                              embedding_regularizer=1e-3, net_regularizer=1e-4)
STEPS = 20
ROWS = 64


def make_batches(steps: int = STEPS, rows: int = ROWS, schema=SCHEMA, seed: int = 0):
  """``steps`` random batches in the jaxrec layout (last one with 5 padding rows)."""
  out = []
  for i in range(steps):
    r = np.random.default_rng([seed, i])
    batch = {
        'sparse': np.stack([r.integers(0, f.vocab_size, rows) for f in schema.sparse],
                           1).astype(np.int32),
        'dense': r.normal(size=(rows, schema.num_dense)).astype(np.float32),
        'label': r.integers(0, 2, rows).astype(np.float32),
        'weight': np.ones(rows, np.float32),
    }
    if i == steps - 1:
      batch['weight'][-5:] = 0.0
    out.append(batch)
  return out


def reference_run(model, batches, optim=OPTIM, seed=0, task=None):
  """The plain single-device trainer: (losses [steps], initial state on host); ``task`` as the
  trainer's (None: CTR)."""
  tx = state_lib.make_optimizer(optim)
  state, mask = state_lib.create_train_state(model, batches[0], tx, seed)
  initial = jax.device_get(state)
  step = jax.jit(state_lib.make_train_step(
      model, tx, mask, optim, state_lib.make_loss_and_grad(model, mask, optim, task=task)))
  losses = []
  for b in batches:
    state, m = step(state, b)
    losses.append(float(m['loss']))
  return np.array(losses), initial


def mesh_for(axes: dict, hosts: int = 0, devices=None):
  if hosts:
    return make_hierarchical_mesh(axes, hosts, devices)
  return make_mesh(axes, devices)


def sharded_run(model, mesh, config: ShardingConfig, batches, initial, optim=OPTIM, task=None):
  """Steps a ShardedTrainer from ``initial``: (losses, trainer, compiled step)."""
  tx = state_lib.make_optimizer(optim)
  trainer = ShardedTrainer(model, tx, optim, mesh, config, batches[0], task=task)
  state = trainer.place_state(initial)
  compiled = trainer.lower_train_step(state, trainer.global_batch(batches[0])).compile()
  losses = []
  for b in batches:
    state, m = compiled(state, trainer.global_batch(b))
    losses.append(float(m['loss']))
  return np.array(losses), trainer, compiled


# The gather each gspmd strategy implies on the CASES meshes of the equivalence tests (data 2 x
# fsdp 4 for FULL_SHARD, fsdp 8 for SHARD_GRAD_OP, (host 2, fsdp 4) for HYBRID_SHARD): kind and
# replica-group size of a collective in the compiled step.
def assert_strategy_gathers(name: str, kinds: set) -> None:
  """``kinds``: ``{(collective kind, group size)}`` of the compiled step of strategy ``name``."""
  if name == 'NO_SHARD':
    assert ('all-reduce', 8) in kinds and not any(k == 'all-gather' for k, _ in kinds), kinds
  elif name == 'FULL_SHARD':
    assert ('all-gather', 4) in kinds, kinds  # over fsdp; replicated over data
  elif name == 'SHARD_GRAD_OP':
    assert ('all-gather', 8) in kinds, kinds
  elif name == 'HYBRID_SHARD':
    assert ('all-gather', 4) in kinds and ('all-gather', 8) not in kinds, kinds
  else:
    raise ValueError(f'no expected gathers for {name!r}')
