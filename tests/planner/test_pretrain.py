"""Pre-training: deterministic loads, the resumable data file, held-out quality, training."""

import json

import numpy as np
import pytest

from jaxrec.planner import pretrain, step
from tests.planner.common import table

CAP = 2 ** 16


class _Gen:
  """What the campaign needs from DlrmSynth: tiny tables."""
  batch_size = 32

  class stats:  # pylint: disable=invalid-name
    num_tables = 3

  @staticmethod
  def table(i, d, name):
    return table(name, 20 + i, d, 2.0)


def test_a_load_depends_only_on_its_index():
  loads = pretrain.random_loads(_Gen, 5, seed=4, max_tables=3, max_bytes=CAP)
  assert pretrain.random_load(_Gen, 4, 3, max_tables=3, max_bytes=CAP) == loads[3]
  assert all(1 <= len(l) <= 3 for l in loads)
  a = pretrain.load_works(loads[2], 32, seed=4, index=2)
  b = pretrain.load_works(loads[2], 32, seed=4, index=2)
  assert all((x.ids == y.ids).all() and (x.samples == y.samples).all() for x, y in zip(a, b))


def _header(**kw):
  return dict({'kind': 'test', 'seed': 0, 'max_bytes': CAP}, **kw)


def test_the_data_file_resumes_a_campaign(tmp_path):
  path = tmp_path / 'data.jsonl'
  cache = step.StepCache()
  kw = dict(max_tables=2, max_bytes=CAP, dims=(8,), warmup=0, runs=1, cache=cache,
            buckets=step.Buckets(1, 1, 1, CAP, min_ids=256))  # a program per table count
  data = pretrain.collect(_Gen, pretrain.CostData(path, _header()), 3, 0, **kw)
  assert sorted(data.samples) == [0, 1, 2]
  with path.open('a', encoding='utf-8') as f:
    f.write('{"index": 3, "tabl')  # a line cut by an interrupted run
  back = pretrain.CostData(path, _header())
  assert sorted(back.samples) == [0, 1, 2] and back.missing(5) == [3, 4]
  assert back.samples[1].load == data.samples[1].load
  assert back.samples[1].timing == data.samples[1].timing
  logged = []
  pretrain.collect(_Gen, back, 5, 0, log=logged.append, **kw)
  assert len(logged) == 2 and logged[-1].startswith('[5/5] load 4: ')
  lines = path.read_text(encoding='utf-8').splitlines()
  assert json.loads(lines[0])['kind'] == 'test' and len(lines) == 6  # the cut line is gone
  # The measured loads are the campaign's loads 0..4, whatever the pieces.
  assert [list(s.load) for s in back.sorted()] == pretrain.random_loads(_Gen, 5, 0, 2, CAP, (8,))
  assert cache.compiles == 2  # 1 or 2 tables: 32 or 64 pooled outputs
  with pytest.raises(pretrain.CostDataError, match=r"seed 0 there, 1 asked"):
    pretrain.CostData(path, _header(seed=1))


def test_kendall_tau():
  assert pretrain.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
  assert pretrain.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
  assert pretrain.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)  # 5 vs 1 pair
  # tau-b with a tie: (C - D) / sqrt((n0 - ties a) (n0 - ties b)) = (4 - 1) / sqrt(6 * 5).
  assert pretrain.kendall_tau([1, 2, 3, 4], [1, 1, 3, 2]) == pytest.approx(3 / np.sqrt(30))


def test_pretrain_measures_loads_and_trains():
  data = pretrain.collect_compute(_Gen, 1, seed=0, max_tables=2, max_bytes=CAP, warmup=1, runs=2)
  assert len(data.costs_ms) == 1 and data.costs_ms[0] > 0 and 1 <= len(data.loads[0]) <= 2
  assert data.spreads[0][0] <= data.costs_ms[0] <= data.spreads[0][1]
  loads = pretrain.random_loads(_Gen, 20, seed=1, max_tables=3)
  costs = [sum(t.dim * t.pooling for t in l) for l in loads]
  model = pretrain.pretrain(pretrain.Collected(loads, costs, [(0, 0)] * 20, 1.0), 32,
                            comm_meshes=((1, 2),), epochs=2, comm_epochs=2, meta={'x': 1})
  assert model.meta['samples'] == 20 and (1, 2) in model.comm and model.meta['x'] == 1
  held = model.meta['held_out']
  assert held['loads'] == 2 and set(held) == {'loads', 'kendall_tau', 'mean_rel_error',
                                              'median_rel_error'}
  assert model.compute_ms(loads[0]) >= 0


def test_padding_check_times_both_shapes():
  r = pretrain.padding_check(_Gen, 1, seed=0, max_tables=1, max_bytes=CAP, dims=(8,), runs=1)
  assert r.shape == (1, 3) and (r[:, :2] > 0).all() and (r[:, 2] >= 0).all()
