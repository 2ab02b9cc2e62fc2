"""DLRM with table-wise, row-wise and column-wise sharded tables trains like the unsharded one."""

import importlib.util

import numpy as np
import pytest

from jaxrec.data.schema import FeatureSchema, SparseField
from jaxrec.embeddings import configs_from_schema
from jaxrec.models.dlrm import DLRM
from jaxrec.sharding.embedding_plan import uniform_plan
from jaxrec.train import state as state_lib
from tests.conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location(
    'train_sharded_embeddings', REPO_ROOT / 'scripts' / 'train_sharded_embeddings.py')
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)

SCHEMA = FeatureSchema((SparseField('user', 30), SparseField('item', 53),
                        SparseField('tags', 17, max_length=3, pooling='mean'),
                        SparseField('city', 9)))
B = 32


def _batches(n):
  rng = np.random.default_rng(0)
  for _ in range(n):
    yield {'sparse': np.stack([rng.integers(0, 30, B), rng.integers(0, 53, B),
                               rng.integers(0, 9, B)], 1).astype(np.int32),
           'multi_hot_ids': rng.integers(0, 17, (B, 1, 3)).astype(np.int32),
           'multi_hot_lengths': rng.integers(0, 4, (B, 1)).astype(np.int32),
           'multi_hot_weights': np.ones((B, 1, 3), np.float32),
           'label': rng.integers(0, 2, B).astype(np.float32),
           'weight': np.ones(B, np.float32)}


@pytest.mark.parametrize('kind', ['mixed',  # table-wise, row-wise and column-wise tables at once
                                  pytest.param('table_wise', marks=pytest.mark.slow),
                                  pytest.param('row_wise', marks=pytest.mark.slow),
                                  pytest.param('column_wise', marks=pytest.mark.slow)])
def test_sharded_training_losses_equal_unsharded(kind):
  # DLRM as configs/dlrm_frappe.py (cat interaction, dropout, embedding L2 0.1) without BatchNorm:
  # with BatchNorm the Dense bias before it has a gradient that is 0 up to rounding, which Adam
  # scales up to learning-rate-sized steps of either sign; training losses are unaffected but the
  # eval-mode outputs then depend on rounding noise.
  model = DLRM(SCHEMA, embedding_dim=4, top_mlp_units=(16, 16), bottom_mlp_units=(),
               top_dropout_rate=0.4, interaction='cat', batch_norm=False)
  ocfg = state_lib.OptimConfig(learning_rate=1e-2, embedding_regularizer=0.1)
  batches = list(_batches(4))
  tx = state_lib.make_optimizer(ocfg)
  state, mask = state_lib.create_train_state(model, batches[0], tx, seed=7)
  plan = uniform_plan(configs_from_schema(SCHEMA, 4), kind)
  sharded = script.ShardedEmbeddingModel(model, SCHEMA, plan, ocfg, tx)
  sharded_state = sharded.shard_state(state)
  train_sharded, eval_sharded = sharded.make_steps()
  train_ref, eval_ref = script.unsharded_steps(model, tx, mask, ocfg)
  for batch in batches:
    state, m_ref = train_ref(state, batch)
    sharded_state, m = train_sharded(sharded_state, batch)
    np.testing.assert_allclose(m['loss'], m_ref['loss'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(eval_sharded(sharded_state, batches[0]),
                             eval_ref(state, batches[0]), rtol=1e-5, atol=1e-5)
  tables = sharded.ebc.unshard(sharded_state.params['emb'])
  for name, table in tables.items():
    np.testing.assert_allclose(table, state.params['embedding'][name], rtol=1e-5, atol=1e-6)
