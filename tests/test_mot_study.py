"""scripts/mot_study.py: the steps-to-reach measure on hand-made curves and the flag checks (the
study end to end is the doc check of docs/mot.md)."""

import os
import runpy

import pytest

from jaxrec.train import study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = runpy.run_path(os.path.join(REPO, 'scripts', 'mot_study.py'))


def _interpolated(s0, l0, s1, l1, target):
  return s0 + (l0 - target) / (l0 - l1) * (s1 - s0)


def test_steps_to_reach_interpolates_between_the_bracketing_points():
  steps, losses = [10, 20, 30, 40], [5.0, 3.0, 1.0, 0.5]
  target = 2.2
  assert study.steps_to_reach(steps, losses, target) == pytest.approx(
      _interpolated(20, 3.0, 30, 1.0, target), rel=1e-12)
  # A point exactly at the target is reached at that point.
  assert study.steps_to_reach(steps, losses, losses[2]) == pytest.approx(steps[2], rel=1e-12)
  # The FIRST crossing counts, even if the curve rises again after it.
  bumpy = [5.0, 2.0, 4.0, 1.0]
  assert study.steps_to_reach(steps, bumpy, 3.0) == pytest.approx(
      _interpolated(10, 5.0, 20, 2.0, 3.0), rel=1e-12)


def test_steps_to_reach_at_the_first_point_and_never():
  steps, losses = [10, 20, 30], [2.0, 1.5, 1.2]
  assert study.steps_to_reach(steps, losses, losses[0] + 0.5) == steps[0]  # nothing before it
  assert study.steps_to_reach(steps, losses, min(losses) - 0.01) is None
  with pytest.raises(ValueError, match='3 steps but 2 losses'):
    study.steps_to_reach(steps, losses[:2], 1.0)


def test_trailing_mean_weights_points_by_the_steps_they_cover():
  steps, values = [5, 10, 20, 30], [4.0, 3.0, 2.0, 1.0]
  assert study.trailing_mean(steps, values, 5) == values  # window within one gap: unchanged
  got = study.trailing_mean(steps, values, 20)  # (step - 20, step]
  assert got[0] == values[0]
  assert got[1] == pytest.approx((5 * 4.0 + 5 * 3.0) / 10)
  assert got[2] == pytest.approx((5 * 4.0 + 5 * 3.0 + 10 * 2.0) / 20)  # 5 > 20 - 20 = 0
  assert got[3] == pytest.approx((10 * 2.0 + 10 * 1.0) / 20)  # 10 <= 30 - 20: out


def _run(model, valid, train, steps=40, size='s', seed=1):
  rec = lambda s, v: {'step': s, 'loss': v, 'text_loss': v + 1.0, 'image_loss': v - 1.0}
  return {'size': size, 'model': model, 'seed': seed, 'steps': steps,
          'curves': {'valid': [rec(s, v) for s, v in valid],
                     'train': [rec(s, v) for s, v in train]}}


def test_reach_gives_mot_fraction_of_dense_steps_per_modality_and_curve():
  dense = _run('dense', [(20, 3.0), (40, 2.0)], [(10, 4.0), (20, 3.0), (30, 2.5), (40, 2.0)])
  mot = _run('mot', [(20, 2.5), (40, 1.5)], [(10, 4.5), (20, 3.5), (30, 2.6), (40, 2.2)])
  out = STUDY['reach']([dense, mot], window=1.0)  # window below the logging gap: raw curves
  for modality, offset in (('overall', 0.0), ('text', 1.0), ('image', -1.0)):
    v = out[('s', modality, 'valid')][0]
    assert v['dense'] == 2.0 + offset and v['mot'] == 1.5 + offset
    assert v['fraction'] == pytest.approx(_interpolated(20, 2.5, 40, 1.5, 2.0) / 40)
    t = out[('s', modality, 'train')][0]
    assert t['fraction'] is None  # MoT's training loss ends above dense's
    assert t['mot'] - t['dense'] == pytest.approx(0.2)
  assert STUDY['fraction_text']([t]) == 'not reached (1 of 1 seeds; final gap +0.2000)'


def test_flags_are_checked(tmp_path):
  with pytest.raises(SystemExit, match=r"unknown \['xxl'\]"):
    STUDY['main'](['--sizes', 'xxl'])
  with pytest.raises(SystemExit, match='multiple of --eval_every'):
    STUDY['main'](['--sizes', 'xs', '--steps', '5', '--eval_every', '2'])
  with pytest.raises(SystemExit, match='--set num_epochs: set by --steps/--eval_every'):
    STUDY['main'](['--sizes', 'xs', '--steps', '4', '--eval_every', '2',
                   '--set', 'num_epochs=3'])


# The study end to end on the real data (CSV, Markdown, cached rerun) runs in the doc check of
# docs/mot.md (tests/doc_checks.py: mot_study).
