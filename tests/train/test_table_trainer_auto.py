"""config.embedding.plan='auto': the trainer plans at start-up with jaxrec.planner and runs it."""

import json

import numpy as np
import pytest

from jaxrec.models import build_model
from jaxrec.planner import cost_model as cm
from jaxrec.sharding.embedding_plan import EmbeddingPlan, TableSharding
from jaxrec.train import state as state_lib
from jaxrec.train.table_trainer import (EmbeddingConfigError, TableShardedTrainer,
                                        sample_features, tables_kjt)
from tests.planner.common import tiny_cost_model
from tests.train.test_table_trainer import OPTIM, RTOL, SCHEMA, SMALL, _batches, _losses
from tests.train.test_table_trainer import _unsharded_losses

STEPS = 3


def _trainer(model, plan, **kw):
  tx = state_lib.make_optimizer(OPTIM)
  return TableShardedTrainer(model, SCHEMA, tx, OPTIM, _batches(1)[0], plan, hosts=2, seed=3, **kw)


def _model(dim=16):
  return build_model('dlrm', SCHEMA, embedding_dim=dim, **SMALL['dlrm'])


@pytest.fixture(scope='module')
def reference():
  """DLRM with 16-wide tables (splittable twice), its batches and unsharded losses."""
  model = _model()
  batches = _batches(STEPS)
  return model, batches, _unsharded_losses(model, batches)[0]


def test_auto_plan_runs_the_unsharded_trajectory(tmp_path, reference):
  model, batches, ref = reference
  path = tmp_path / 'cost.npz'
  cm.save(tiny_cost_model(), path)
  trainer = _trainer(model, 'auto', planner='neuroshard', cost_model=str(path),
                     memory_cap_bytes=31 * 16 * 4)  # the largest table fills a device
  trainer.plan.validate([t.config for t in trainer.tables])
  assert set(trainer.plan.tables) == {t.config.name for t in trainer.tables}
  got, _ = _losses(trainer, batches)
  np.testing.assert_allclose(got, ref, rtol=RTOL)


def test_uneven_column_pieces_run_as_units_on_one_device(tmp_path, reference):
  # NeuroShard's halves 8 | 4 | 4 of a 16-wide table become column_wise units of 4 with the
  # 8-wide piece as two units on device 2 (placement.to_plan).
  model, batches, ref = reference
  names = [f'embedding/{f}' for f in ('user', 'tags', 'item', 'ctx')]
  specs = {n: TableSharding('table_wise', devices=(i,)) for i, n in enumerate(names)}
  specs['embedding/item'] = TableSharding('column_wise', devices=(2, 2, 0, 5))
  path = tmp_path / 'plan.json'
  path.write_text(json.dumps(EmbeddingPlan(specs, 2, 4).to_dict()))
  got, _ = _losses(_trainer(model, str(path)), batches)
  np.testing.assert_allclose(got, ref, rtol=RTOL)


def test_features_come_from_the_example_batch_and_bad_planner():
  model = _model(dim=4)
  trainer = _trainer(model, 'auto', planner='lookup_greedy')
  batch = _batches(1)[0]
  kjt = tables_kjt(state_lib.features(batch), SCHEMA, trainer.tables)
  feats = {f.name: f for f in sample_features(trainer.tables, kjt)}
  # 'tags' is multi-hot: ids per sample = the mean bag length; one-hot fields read one id.
  assert feats['embedding/tags'].pooling == pytest.approx(batch['multi_hot_lengths'][:, 0].mean())
  assert feats['embedding/user'].pooling == 1.0
  user = batch['sparse'][:, 0]
  _, counts = np.unique(user, return_counts=True)
  assert feats['embedding/user'].hist[0] == pytest.approx(np.mean(counts == 1))
  with pytest.raises(EmbeddingConfigError, match=r"plan=auto \(planner 'best'\): unknown planner "
                                                 r"method 'best'"):
    _trainer(model, 'auto', planner='best')
  with pytest.raises(EmbeddingConfigError, match=r"plan=auto \(planner 'neuroshard'\): no "
                                                 r'pre-trained cost model at /nope.npz'):
    _trainer(model, 'auto', cost_model='/nope.npz')
