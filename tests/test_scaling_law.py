"""The scaling-law study: its reduced version end to end, its fits, and the full preset's ladders."""

import csv
import os
import runpy

import numpy as np
import pytest

from jaxrec.data.synthetic import SyntheticConfig
from jaxrec.models import build_model
from jaxrec.models.flops import per_example_flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = runpy.run_path(os.path.join(REPO, 'scripts', 'scaling_law.py'))


def test_fit_power_law_recovers_an_exact_power_law():
  flops = np.geomspace(1e4, 1e7, 6)
  a, alpha = STUDY['fit_power_law'](flops, 3.0 * flops ** -0.25)
  np.testing.assert_allclose([a, alpha], [3.0, 0.25], rtol=1e-9)
  # Non-positive excesses are left out; fewer than two points left gives NaN.
  a, alpha = STUDY['fit_power_law'](flops, np.r_[-1.0, 3.0 * flops[1:] ** -0.25])
  np.testing.assert_allclose([a, alpha], [3.0, 0.25], rtol=1e-9)
  assert np.isnan(STUDY['fit_power_law'](flops[:2], [0.1, -0.1])[1])


def test_fits_summarise_gains_per_model():
  rows = [dict(model='m', size=i, flops=f, test_logloss=0.3 + 0.2 * f ** -0.5, test_auc=0.9 - f ** -0.5,
               excess_logloss=0.2 * f ** -0.5, bayes_auc=0.9) for i, f in enumerate([1e2, 1e4])]
  fit = STUDY['fits'](rows)['m']
  np.testing.assert_allclose([fit['alpha'], fit['beta'], fit['A'], fit['B']], [0.5, 0.5, 0.2, 1.0],
                             rtol=1e-9)
  assert fit['flops_range'] == 100 and fit['best_size'] == 1
  np.testing.assert_allclose(fit['logloss_gain_total'], 0.2 * (0.1 - 0.01))


def test_full_preset_spans_two_orders_of_magnitude_for_every_model():
  config = STUDY['load_config']('full')
  schema = SyntheticConfig(**config.data.to_dict()).schema()
  assert set(config.models) == {'wukong', 'dlrm', 'dcnv2'}
  spans = {}
  for name, ladder in config.models.items():
    flops = [per_example_flops(build_model(name, schema, embedding_dim=config.embedding_dim,
                                           **dict(kw))) for kw in ladder]
    assert flops == sorted(flops), (name, flops)
    spans[name] = (flops[0], flops[-1])
    assert flops[-1] >= 100 * flops[0], (name, flops)
  # The baselines cover Wukong's range (within a factor 1.5 at both ends).
  lo, hi = spans['wukong']
  for name in ('dlrm', 'dcnv2'):
    assert spans[name][0] <= 1.5 * lo and spans[name][1] >= hi / 1.5, spans


def test_reduced_study_runs_end_to_end(tmp_path):
  out = str(tmp_path / 'scaling')
  STUDY['main'](['--preset', 'reduced', '--models', 'wukong', '--out', out])
  with open(out + '.csv', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  assert [(r['model'], r['size']) for r in rows] == [('wukong', '0'), ('wukong', '1')]
  config = STUDY['load_config']('reduced')
  schema = SyntheticConfig(**config.data.to_dict()).schema()
  for r, kw in zip(rows, config.models['wukong']):
    model = build_model('wukong', schema, embedding_dim=config.embedding_dim, **dict(kw))
    assert int(r['flops']) == per_example_flops(model)
    assert int(r['steps']) == config.num_train // config.batch_size  # one pass
    assert 0.5 < float(r['test_auc']) <= float(r['bayes_auc']) + 0.05
    np.testing.assert_allclose(float(r['excess_logloss']),
                               float(r['test_logloss']) - float(r['bayes_logloss']), rtol=1e-9)
    # Better than predicting the base rate (NE < 1), worse than the teacher.
    assert float(r['test_ne']) < 1 and float(r['bayes_logloss']) < float(r['test_logloss'])
  with open(out + '.png', 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  text = open(out + '.md', encoding='utf-8').read()
  assert 'python scripts/scaling_law.py --preset reduced --models wukong' in text
  assert '| wukong | 0 |' in text and 'alpha' in text
  # A rerun reuses the finished rows (<out>.rows.jsonl) instead of training again.
  logs = []
  rows2, _ = STUDY['run_study'](config, ['wukong'], log=logs.append,
                                rows_file=out + '.rows.jsonl')
  assert sum('reused' in line for line in logs) == 2
  assert [r['test_logloss'] for r in rows2] == [float(r['test_logloss']) for r in rows]


def test_unknown_model_and_preset_raise():
  with pytest.raises(ValueError, match="preset must be 'full' or 'reduced'"):
    STUDY['load_config']('huge')
  with pytest.raises(ValueError, match="'fm' has no ladder"):
    STUDY['run_study'](STUDY['load_config']('reduced'), ['fm'], log=lambda s: None)
