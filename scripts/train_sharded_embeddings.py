"""DLRM on Frappe with its embedding tables sharded by a plan, next to the unsharded model.

    python scripts/train_sharded_embeddings.py --data_dir ../shared/data/frappe --epochs 3 \
        --plans none,table_wise,row_wise,column_wise

Each run starts from the same seed (same initial parameters, batch order and dropout keys) and
trains the model of configs/dlrm_frappe.py with the loop's optimizer (clip 10 + Adam, embedding
regularizer): 'none' is jaxrec's ordinary train step; the others take the embedding tables out of
the model, shard them with ``ShardedEmbeddingBagCollection`` on the 8 (emulated) devices and feed
the pooled embeddings back into the model in place of its ``FieldEmbedding``
(``jaxrec.embeddings.inject``: the model code is unchanged). Prints the validation AUC /
logloss after every epoch.

The model's embedding parameters live under ``params['embedding']`` (DLRM's ``FieldEmbedding``);
the sharded state holds ``{'dense': the rest, 'emb': the sharded buffers}``, so Adam, clipping and
the L2 regularizer see the same numbers (the buffers' padding rows are zeros with zero gradient).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time

if __name__ == '__main__':
  os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np

from jaxrec.embeddings import KeyedJagged, configs_from_schema
from jaxrec.embeddings.collection import stack_features
from jaxrec.embeddings.inject import inject_embeddings
from jaxrec.sharding.embedding_plan import EmbeddingPlan, uniform_plan
from jaxrec.sharding.embedding_shard import ShardedEmbeddingBagCollection, embedding_mesh
from jaxrec.train import state as state_lib

class ShardedEmbeddingModel:
  """A CTR model whose ``FieldEmbedding`` (``params[embedding_name]``) is sharded by ``plan``.

  Attributes after construction: ``ebc`` (the sharded collection), ``train_step`` and
  ``eval_step`` (jitted, with the signatures of ``state_lib.make_train_step`` / ``make_eval_step``).
  """

  def __init__(self, model, schema, plan: EmbeddingPlan, ocfg: state_lib.OptimConfig, tx,
               embedding_name: str = 'embedding'):
    self.model, self.schema, self.tx, self.name = model, schema, tx, embedding_name
    self.tables = configs_from_schema(schema, model.embedding_dim)
    self.ebc = ShardedEmbeddingBagCollection(self.tables, plan, embedding_mesh(plan))
    self.mask = None
    self.ocfg = ocfg

  def shard_state(self, state: state_lib.TrainState) -> state_lib.TrainState:
    """The sharded twin of an unsharded state (fresh optimizer state)."""
    # Copies: the unsharded state's arrays may be donated to its own train step.
    state = jax.tree.map(jnp.array, state)
    dense = {k: v for k, v in state.params.items() if k != self.name}
    params = {'dense': dense, 'emb': self.ebc.shard(state.params[self.name])}
    self.mask = {'dense': jax.tree.map(lambda _: False, dense),
                 'emb': jax.tree.map(lambda _: True, params['emb'])}
    return state.replace(params=params, opt_state=self.tx.init(params))

  def _forward(self, params, batch_stats, feats, train, rngs=None):
    kjt = KeyedJagged.from_batch(feats, self.schema)
    emb = stack_features(self.ebc.lookup(params['emb'], kjt), kjt.keys)  # [B, F, d]
    variables = {'params': params['dense']}
    if batch_stats:
      variables['batch_stats'] = batch_stats
    with inject_embeddings(emb):
      if train:
        return self.model.apply(variables, feats, train=True, rngs=rngs, mutable=['batch_stats'])
      return self.model.apply(variables, feats, train=False)

  def make_steps(self):
    """(train_step, eval_step), jitted."""

    def loss_and_grad(state, batch, dropout_rng):

      def loss_fn(params):
        logits, updates = self._forward(params, state.batch_stats, state_lib.features(batch),
                                        True, {'dropout': dropout_rng})
        data_loss = state_lib.weighted_bce(logits, batch['label'], batch['weight'])
        reg = state_lib.regularization(params, self.mask, self.ocfg)
        return data_loss + reg, (data_loss, reg, updates.get('batch_stats', {}))

      return jax.value_and_grad(loss_fn, has_aux=True)(state.params)

    train_step = state_lib.make_train_step(self.model, self.tx, self.mask, self.ocfg,
                                           loss_and_grad)

    def eval_step(state, batch):
      return self._forward(state.params, state.batch_stats, state_lib.features(batch), False)

    return jax.jit(train_step, donate_argnums=0), jax.jit(eval_step)


def unsharded_steps(model, tx, mask, ocfg):
  return (jax.jit(state_lib.make_train_step(model, tx, mask, ocfg), donate_argnums=0),
          jax.jit(state_lib.make_eval_step(model)))


def main(argv=None):
  from jaxrec.train import loop  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/dlrm_frappe.py')
  p.add_argument('--data_dir', default='../shared/data/frappe')
  p.add_argument('--epochs', type=int, default=3)
  p.add_argument('--plans', default='none,table_wise,row_wise,column_wise')
  p.add_argument('--max_steps', type=int, default=0, help='per epoch (0: all)')
  p.add_argument('--model_kwarg', action='append', default=[],
                 help='name=value (a Python literal) overriding config.model_kwargs')
  args = p.parse_args(argv)
  spec = importlib.util.spec_from_file_location('experiment_config', args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.data_dir = args.data_dir
  for item in args.model_kwarg:
    name, value = item.split('=', 1)
    config.model_kwargs[name] = ast.literal_eval(value)
  data = loop.load_data(config)
  model = loop.make_model(config, data.schema)
  ocfg = loop.optim_config(config)
  train, valid = data.splits['train'], data.splits['valid']
  example = next(train.batches(config.batch_size))
  results = {}
  for kind in args.plans.split(','):
    tx = state_lib.make_optimizer(ocfg)
    state, mask = state_lib.create_train_state(model, example, tx, config.seed)
    if kind == 'none':
      train_step, eval_step = unsharded_steps(model, tx, mask, ocfg)
    else:
      sharded = ShardedEmbeddingModel(model, data.schema,
                                      uniform_plan(configs_from_schema(data.schema,
                                                                      config.embedding_dim), kind),
                                      ocfg, tx)
      state = sharded.shard_state(state)
      train_step, eval_step = sharded.make_steps()
    t0 = time.time()
    for epoch in range(args.epochs):
      losses = []
      for i, batch in enumerate(train.batches(config.batch_size, shuffle=True, seed=config.seed,
                                              epoch=epoch)):
        if args.max_steps and i >= args.max_steps:
          break
        state, m = train_step(state, batch)
        losses.append(float(m['loss']))
      metrics = loop.evaluate(eval_step, state, valid, config.eval_batch_size)
      print(f'{kind:>14s} epoch {epoch + 1}: train loss {np.mean(losses):.6f}  valid AUC '
            f'{metrics["auc"]:.6f}  logloss {metrics["logloss"]:.6f}  ({time.time() - t0:.0f} s)',
            flush=True)
      results[kind] = metrics
  print('final valid AUC:', {k: round(v['auc'], 6) for k, v in results.items()})
  return results


if __name__ == '__main__':
  main()
