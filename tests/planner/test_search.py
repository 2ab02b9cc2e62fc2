"""Every method returns a plan that passes EmbeddingPlan.validate; NeuroShard's search pieces."""

import numpy as np
import pytest

from jaxrec import planner
from jaxrec.planner import cost_model as cm
from jaxrec.planner import placement, report, search
from jaxrec.planner.features import TableFeatures
from jaxrec.sharding.embedding_plan import EmbeddingPlan
from tests.planner.common import table, tables, tiny_cost_model

B = 64


@pytest.fixture(scope='module')
def model():
  return tiny_cost_model(B)


def _cap(ts, devices, fill=0.5):
  # TorchRec's storage estimate adds optimizer state and id / output buffers to the tables: with
  # these tiny tables the buffers weigh, hence the slack.
  n = devices if isinstance(devices, int) else devices[0] * devices[1]
  return int(sum(t.num_bytes for t in ts) / n / fill)


@pytest.mark.parametrize('devices', [2, (2, 2)])
@pytest.mark.parametrize('method', planner.METHODS)
def test_every_method_returns_a_valid_plan(method, devices, model):
  ts = tables(14, seed=1)
  cap = _cap(ts, devices)
  plan = planner.plan(ts, devices, cap, method, cost_model=model, batch_size=B)
  assert isinstance(plan, EmbeddingPlan)
  plan.validate([t.config() for t in ts])  # plan() validates too; the caps hold
  assert set(plan.tables) == {t.name for t in ts} and plan.memory_cap_bytes == cap
  n = devices if isinstance(devices, int) else 4
  assert plan.num_devices == n
  pred = report.predict(plan, ts, model, B)
  assert pred.max_ms > 0 and pred.imbalance >= 1.0


def test_column_splits_and_refinement(model):
  # Two wide tables on four devices: balance needs column splits (two steps of the beam: one
  # split alone does not lower the slowest device).
  ts = [table(f'w{i}', 200, 64, 4.0) for i in range(2)] + [table('n', 50, 8, 1.0)]
  dev = placement.Devices.of(4, None)
  plain = search.neuroshard(ts, dev, model)
  assert any(s.sharding_type == 'column_wise' for s in plain.plan.tables.values())
  plain.plan.validate([t.config() for t in ts])
  refined = search.neuroshard(ts, dev, model, refined=True)
  assert refined.predicted_ms <= plain.predicted_ms * (1 + 1e-9)
  # The plan holds the pieces' bytes on the pieces' devices (a wider piece as several unit
  # columns on its device).
  nbytes = np.zeros(4)
  for p, d in zip(plain.pieces, plain.assignment):
    nbytes[d] += p.num_bytes
  shards = plain.plan.shards([t.config() for t in ts])
  np.testing.assert_array_equal([sum(s.num_bytes for s in shards if s.device == k)
                                 for k in range(4)], nbytes)
  # Halves are multiples of 4: a dim-4 table is never split.
  ev = search.Evaluator(model, placement.split_oversized(ts, dev))
  small = placement.whole_pieces([table('s', 10, 4)])
  pieces, _, _ = search.beam_search(small, ev, float('inf'))
  assert len(pieces) == 1


def test_table_wise_prediction_equals_the_plans(model):
  ts = tables(9, seed=5, dims=(4,))  # dim 4: never split
  result = search.neuroshard(ts, placement.Devices.of(3, None), model)
  assert {s.sharding_type for s in result.plan.tables.values()} == {'table_wise'}
  pred = report.predict(result.plan, ts, model, B)
  assert pred.max_ms == pytest.approx(result.predicted_ms, rel=1e-5)


def test_greedy_grid_respects_memory_and_balance(model):
  ts = tables(10, seed=2)
  dev = placement.Devices.of(3, _cap(ts, 3, fill=0.9))
  ev = search.Evaluator(model, placement.split_oversized(ts, dev))
  pieces = placement.whole_pieces(ts)
  assign, cost = search.greedy_grid(pieces, ev, dev.cap)
  loads = np.zeros(3)
  for p, d in zip(pieces, assign):
    loads[d] += p.num_bytes
  assert loads.max() <= dev.cap and np.isfinite(cost)
  # An impossible balance cap falls back to none rather than failing.
  assert search.greedy(pieces, ev.embed(pieces), ev, dev.cap, scale=0.1) is None
  assert search.greedy_grid(pieces, ev, dev.cap, scales=(0.1,))[0] is not None


def test_oversized_tables_are_split_row_wise(model):
  big = table('big', 4000, 32, 3.0)  # 512,000 bytes
  ts = [big] + tables(6, seed=3)
  cap = 300_000
  for method in planner.METHODS:
    plan = planner.plan(ts, 4, cap, method, cost_model=model, batch_size=B)
    kind = plan.tables['big'].sharding_type
    assert kind in ('row_wise', 'table_row_wise', 'grid'), (method, kind)


def test_a_table_no_device_holds_names_table_and_sizes(model):
  ts = [table('huge', 10_000, 64)] + tables(3)
  for method in planner.METHODS:
    with pytest.raises(planner.PlannerError,
                       match=r"table 'huge' \(10000 rows x 64 dims, 2560000 bytes\) fits no "
                             r'device even row-wise: its row block on each of the 2 devices '
                             r'needs 1280000 bytes, the cap is 100000 bytes per device'):
      planner.plan(ts, 2, 100_000, method, cost_model=model, batch_size=B)


def test_no_fit_and_bad_requests(model):
  ts = [table(f'x{i}', 100, 64) for i in range(5)]  # 25,600 bytes each
  with pytest.raises(planner.NoFitError, match='fits on no device'):
    planner.plan(ts, 2, 40_000, 'size_greedy')
  with pytest.raises(planner.NoFitError):
    planner.plan(ts, 2, 40_000, 'neuroshard', cost_model=model, batch_size=B)
  with pytest.raises(planner.PlannerError, match=r"unknown planner method 'greedy'; one of \("):
    planner.plan(ts, 2, None, 'greedy')
  with pytest.raises(planner.PlannerError, match='devices must be >= 1'):
    planner.plan(ts, 0, None, 'random')
  with pytest.raises(planner.PlannerError, match='no pre-trained cost model at .*missing.npz'):
    planner.plan(ts, 2, None, 'neuroshard', cost_model='/nonexistent/missing.npz')


def test_plain_configs_plan_with_uniform_access():
  from jaxrec.embeddings.config import EmbeddingBagConfig
  configs = [EmbeddingBagConfig(f'c{i}', 100 * (i + 1), 8, (f'f{i}',)) for i in range(5)]
  plan = planner.plan(configs, 2, None, 'lookup_greedy')
  plan.validate(configs)


def test_analytic_and_neural_models_share_the_interface(model):
  analytic = cm.AnalyticCostModel(B)
  ts = tables(8, seed=4)
  for m in (analytic, model):
    plan = planner.plan(ts, 2, None, 'neuroshard_refined', cost_model=m, batch_size=B)
    text = report.describe(plan, ts, m, B, method='neuroshard_refined')
    assert text.startswith('embedding plan (neuroshard_refined): 8 tables on 1 host(s) x 2')
    assert 'imbalance' in text and 'device 1:' in text
  assert isinstance(ts[0], TableFeatures)
