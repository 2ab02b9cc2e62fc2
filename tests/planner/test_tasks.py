"""dlrm-synth: the parser, and tables that reproduce Meta's DLRM statistics.

Tolerances: the population's histogram of all unique ids equals the record's target within
1e-3 per bin (iterative fitting); the printed shares (3 decimals) within 0.005; ids per sample per
table within 0.1 %; a sampled batch reproduces its table's features within 0.02 per bin and 2 %
of the pooling factor.
"""

import numpy as np
import pytest

from jaxrec.planner import features as F
from jaxrec.planner import tasks as T

STATS = 'dlrm_datasets/2021/locality_stats.txt'


@pytest.fixture(scope='module')
def record(shared_data):
  path = shared_data / STATS
  if not path.is_file():
    pytest.skip(f'{path} not found')
  return T.parse_locality_stats(path)[0]


@pytest.fixture(scope='module')
def gen(record):
  return T.DlrmSynth(record)


def test_parser_reads_the_2021_trace(shared_data, record):
  records = T.parse_locality_stats(shared_data / STATS)
  assert len(records) == 17
  assert (record.trace, record.num_tables, record.batch_size) == ('fbgemm_t856_bs65536.pt', 856,
                                                                  65536)
  assert (record.num_ids, record.num_unique, record.mean_count) == (887017990, 128435723, 6.9)
  assert record.hist[:3] == (0.473, 0.152, 0.139) and record.id_ratio[-1] == 0.019
  assert record.pooling == pytest.approx(15.81, abs=0.01)  # ids per sample per table


def test_parser_names_file_and_line(tmp_path, shared_data, record):
  lines = (shared_data / STATS).read_text().splitlines()
  bad = list(lines)
  bad[9] = '(4, 8]: lots'  # line 10: bin 3 of the first histogram
  path = tmp_path / 'locality_stats.txt'
  path.write_text('\n'.join(bad))
  with pytest.raises(T.StatsFormatError, match=r'locality_stats.txt:10: expected bin 3'):
    T.parse_locality_stats(path)
  path.write_text('\n'.join(lines[:4]))
  with pytest.raises(T.StatsFormatError, match=r'locality_stats.txt:5: expected "Avg col size'):
    T.parse_locality_stats(path)


def test_population_reproduces_the_record(record, gen):
  pop = gen.population
  assert len(pop.pooling) == 856
  np.testing.assert_allclose(pop.aggregate_hist(), record.target_hist(), atol=1e-3)
  printed = np.asarray(record.hist)
  big = printed >= T.PRINTED_MIN
  np.testing.assert_allclose(pop.aggregate_hist()[big], printed[big], atol=0.005)
  assert pop.pooling.mean() == pytest.approx(record.pooling, rel=1e-3)
  assert pop.pooling.std() > 5  # tables differ
  assert np.abs(pop.hist - record.target_hist()).max() > 0.05  # and so do their histograms


def test_thinning_moves_counts_down(record, gen):
  same = T.thinning_matrix(1.0)
  h = record.target_hist()
  np.testing.assert_allclose(T.thin(h, same), h, atol=1e-12)
  thinned = T.thin(h, gen.matrix)  # batch 1024 of 65536
  assert thinned[0] > h[0] and abs(thinned.sum() - 1) < 1e-9
  assert T.mean_count(thinned) < T.mean_count(h)


def test_sampled_batches_reproduce_table_features(gen):
  rng = np.random.default_rng(0)
  for index in (0, 17, 400):
    table = gen.table(index, 32)
    ids, samples = T.sample_ids(table, gen.batch_size, rng)
    assert ids.min() >= 0 and ids.max() < table.rows
    assert samples.min() >= 0 and samples.max() < gen.batch_size
    got = F.from_ids('x', ids, gen.batch_size, table.rows, table.dim)
    assert got.pooling == pytest.approx(table.pooling, rel=0.02)
    np.testing.assert_allclose(got.hist, table.hist, atol=0.02)


def test_tasks_are_deterministic_and_follow_neuroshard(gen):
  a = gen.tasks(4, seed=3, num_devices=4)
  b = gen.tasks(4, seed=3, num_devices=4)
  assert a == b
  assert a != gen.tasks(4, seed=4, num_devices=4)
  for task in a:
    assert 10 <= len(task.tables) < 60
    assert {t.dim for t in task.tables} <= set(T.TRACE_DIMS)
    assert task.num_bytes <= T.FILL * 4 * task.memory_cap_bytes
    assert task.batch_size == 1024 and len({t.name for t in task.tables}) == len(task.tables)
  with pytest.raises(ValueError, match='no task of'):
    gen.tasks(1, seed=0, num_devices=1, memory_cap_bytes=1000, max_redraws=3)
