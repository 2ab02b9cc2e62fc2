"""scripts/moma_study.py on hand-made runs: the FLOPs savings factor (the MoMa paper's definition:
dense's training FLOPs over the variant's at dense's final loss), its bound when the target is
never reached, the causal gap and the goal lines. The study end to end on the real data is the
doc check of docs/moma.md (tests/test_docs.py)."""

import os
import runpy

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = runpy.run_path(os.path.join(REPO, 'scripts', 'moma_study.py'))


def _run(variant, valid, flops=100.0, steps=40, ec=None, causal=None):
  rec = lambda s, v: {'step': s, 'loss': v, 'text_loss': v + 1.0, 'image_loss': v - 1.0}
  run = {'size': 'xs', 'variant': variant, 'seed': 1, 'steps': steps, 'flops_per_token': flops,
         'curves': {'valid': [rec(s, v) for s, v in valid], 'train': []},
         'valid': {'loss': valid[-1][1] if ec is None else ec}}
  if causal is not None:
    run['aux_valid'] = {'loss': causal}
  return run


DENSE = _run('dense', [(10, 4.0), (20, 3.0), (30, 2.5), (40, 2.0)])


def test_savings_is_dense_flops_over_the_variant_flops_at_dense_final_loss():
  # Reaches 2.0 halfway between steps 10 (3.0) and 20 (1.0): step 15, at 1.1x the FLOPs per step.
  moma = _run('moma', [(10, 3.0), (20, 1.0), (30, 0.9), (40, 0.8)], flops=110.0)
  got = STUDY['savings']([DENSE, moma], 'xs', 1)
  assert got['dense']['overall'] == (pytest.approx(1.0), True)
  factor, reached = got['moma']['text']  # text losses are all +1: the same crossing
  assert reached and factor == pytest.approx(40 * 100.0 / (15 * 110.0), rel=1e-12)
  assert STUDY['savings_text'](got['moma']['image']) == f'{40 * 100 / (15 * 110):.2f}x'


def test_never_reaching_dense_is_a_bound_from_the_whole_run():
  mod = _run('moma_mod', [(10, 4.5), (20, 3.5), (30, 3.0), (40, 2.5)], flops=80.0)
  factor, reached = STUDY['savings']([DENSE, mod], 'xs', 1)['moma_mod']['overall']
  assert not reached and factor == pytest.approx(40 * 100.0 / (40 * 80.0))
  assert STUDY['savings_text']((factor, reached)) == '< 1.25x (not reached)'


def test_goal_lines_order_the_savings_and_check_the_causal_gap():
  moe = _run('moe', [(10, 3.5), (20, 2.5), (30, 2.0), (40, 1.9)], ec=1.9, causal=1.95)
  moma = _run('moma', [(10, 3.0), (20, 2.0), (30, 1.8), (40, 1.7)], ec=1.7, causal=1.72)
  runs = [DENSE, moe, moma]
  assert STUDY['causal_gap'](moma) == pytest.approx(1.72 / 1.7 - 1)
  lines = STUDY['goal_lines'](runs, 'xs', [1], ['dense', 'moe', 'moma'])
  text = '\n'.join(lines)
  assert 'text: MoMa 2.00x > mixed MoE 1.33x > 1: holds' in text
  assert 'within 2% of the training-mode loss: +1.18%, holds' in text
  moma['aux_valid']['loss'] = 1.8  # +5.9%
  assert 'does not hold' in '\n'.join(STUDY['goal_lines'](runs, 'xs', [1], ['dense', 'moe',
                                                                            'moma']))


def test_bad_arguments_are_refused():
  with pytest.raises(SystemExit, match='dense'):
    STUDY['main'](['--variants', 'moe,moma', '--root', '/nonexistent'])
  with pytest.raises(SystemExit, match='--aux_steps'):
    STUDY['main'](['--aux_steps', '30', '--eval_every', '20', '--root', '/nonexistent'])
  with pytest.raises(SystemExit, match='set by'):
    STUDY['main'](['--set', 'recipe=none', '--root', '/nonexistent'])
