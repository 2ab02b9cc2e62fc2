"""What ``config.embedding.plan='auto'`` plans for a config, without building a trainer.

``plan_for_config`` loads the config's data and model as the loop does, takes the model's tables
(``table_trainer.model_tables``) and the first training batch, measures each table's features on
it (``table_trainer.sample_features``) and plans with ``config.embedding.planner`` for
``num_devices`` devices (default: this machine's) split into ``config.embedding.hosts`` hosts.
``scripts/plan.py`` prints and writes the result.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import ml_collections

from jaxrec import planner
from jaxrec.planner import cost_model as cm
from jaxrec.sharding.embedding_plan import EmbeddingPlan
from jaxrec.train import loop
from jaxrec.train import state as state_lib
from jaxrec.train.table_trainer import (auto_plan, mesh_shape, model_tables, sample_features,
                                        tables_kjt)


@dataclasses.dataclass(frozen=True)
class ConfigPlan:
  plan: EmbeddingPlan
  features: tuple[planner.features.TableFeatures, ...]
  batch_size: int
  method: str


def plan_for_config(config: ml_collections.ConfigDict,
                    num_devices: Optional[int] = None) -> ConfigPlan:
  """The plan ``auto`` would run (module docstring)."""
  data = loop.load_data(config)
  model = loop.make_model(config, data.schema)
  tx = state_lib.make_optimizer(loop.optim_config(config))
  example = next(data.splits['train'].batches(config.batch_size))
  boxed = jax.eval_shape(lambda: state_lib.init_boxed_state(
      model, state_lib.zero_features(example), tx, config.seed))
  tables = model_tables(boxed.params, data.schema)
  kjt = tables_kjt(state_lib.features(example), data.schema, tables)
  feats = sample_features(tables, kjt)
  e = config.embedding
  hosts, per_host = mesh_shape(e.get('hosts', 0), num_devices or jax.device_count())
  method = e.get('planner', 'neuroshard')
  plan = auto_plan([t.config for t in tables], hosts, per_host, e.memory_cap_bytes, method, feats,
                   e.get('cost_model', ''), kjt.batch_size)
  return ConfigPlan(plan, tuple(feats), kjt.batch_size, method)


def predictor(path: str = '', batch_size: int = planner.DEFAULT_BATCH):
  """``(cost model, note)``: the NeuroShard model at ``path`` (or the shipped one); without one,
  ``AnalyticCostModel`` (TorchRec's table-wise estimate) and a note saying so."""
  try:
    return planner.load_cost_model(path or None), ''
  except (planner.PlannerError, cm.CostModelFormatError) as e:
    return cm.AnalyticCostModel(batch_size), (f'note: costs predicted by TorchRec\'s analytic '
                                              f'estimate ({e})')
