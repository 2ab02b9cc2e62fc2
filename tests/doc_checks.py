"""Assertions on what a doc command wrote (``Run(check=...)`` in tests/test_docs.py).

A study or benchmark the docs show is run once in the suite, by its doc check; what a test would
assert about its outputs is asserted here, on the scratch repository the command ran in, instead
of running the script a second time in a test of its own. Each check is
``check(root, command, run)``: ``root`` the scratch repository, ``command`` the reduced command
that ran, ``run(cmd)`` to run another command there.
"""

import csv
import json
import pathlib
import time

import pytest


def _csv(path: pathlib.Path) -> list[dict]:
  with open(path, newline='', encoding='utf-8') as f:
    return list(csv.DictReader(f))


def _png(path: pathlib.Path) -> None:
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n', path


def _markdown(path: pathlib.Path, command: str, script: str) -> str:
  text = path.read_text(encoding='utf-8')
  assert '```' not in text  # docs/ executes fenced commands: generated Markdown holds none
  args = command.split(f'python {script} ', 1)[1]
  assert f'Command: `python {script} {args}`' in text, text[:500]
  assert 'Machine:' in text and 'load average' in text
  return text


def mot_bench(root: pathlib.Path, command: str, run) -> None:
  """scripts/bench_mot.py at xs: both models, the fallback, and the FLOP ratios."""
  del run
  rows = {row['variant']: row for row in _csv(root / 'docs' / 'mot_bench.csv')}
  assert set(rows) == {'dense', 'mot', 'mot_every_modality'}
  dense, mot, every = rows['dense'], rows['mot'], rows['mot_every_modality']
  assert all(row['size'] == 'xs' for row in rows.values())
  assert int(mot['params']) > int(dense['params'])  # untied copies of the non-embedding weights
  # Grouped routing: MoT's compiled FLOPs are the dense model's (within the 1.1x).
  assert float(mot['fwd_flops_ratio']) <= 1.1 and float(mot['train_flops_ratio']) <= 1.1
  # Every modality's weights on every token costs more than that.
  assert float(every['train_flops_ratio']) > 1.1 and every['goal'] == 'FAIL'
  assert float(dense['fwd_flops']) >= float(dense['analytic_fwd_flops']) > 0
  assert float(dense['train_flops']) > 2 * float(dense['fwd_flops'])
  assert float(mot['step_ms']) > 0 and mot['goal'] in ('PASS', 'FAIL')
  md = _markdown(root / 'docs' / 'mot_bench.md', command, 'scripts/bench_mot.py')
  assert 'scan_layers=False' in md
  assert '| xs | mot |' in md and '| xs | mot_every_modality |' in md


def mot_study(root: pathlib.Path, command: str, run) -> None:
  """scripts/mot_study.py at xs (two steps, one validation): CSV against the runs' metrics, the
  parameter relation of MoT and dense, the Markdown, and a rerun that reads the cached runs and
  refuses other settings."""
  out = root / 'docs' / 'mot_study'
  rows = _csv(out.with_suffix('.csv'))
  for model in ('dense', 'mot'):
    mine = [r for r in rows if r['model'] == model]
    assert [int(r['step']) for r in mine if r['split'] == 'valid'] == [2]
    assert [int(r['step']) for r in mine if r['split'] == 'train'] == [2]
    assert {r['size'] for r in mine} == {'xs'} and {r['seed'] for r in mine} == {'2021'}
    with open(root / 'runs' / 'mot_study' / f'xs_{model}_seed2021' / 'metrics.jsonl',
              encoding='utf-8') as f:
      last = [json.loads(l) for l in f if '"valid"' in l][-1]
    assert float(mine[-1]['loss']) == pytest.approx(last['loss'], rel=1e-12)
  first = {r['model']: r for r in rows}
  dense, mot = first['dense'], first['mot']
  # MoT unties every non-embedding parameter by modality (2 here) and shares the embedding.
  assert int(mot['non_embedding_params']) == 2 * int(dense['non_embedding_params'])
  assert (int(mot['params']) - int(mot['non_embedding_params'])
          == int(dense['params']) - int(dense['non_embedding_params']))
  assert float(mot['flops_per_token']) == float(dense['flops_per_token']) > 0
  _png(out.with_suffix('.png'))
  text = _markdown(out.with_suffix('.md'), command, 'scripts/mot_study.py')
  assert '**Size xs**' in text and 'Goal at the largest size run (xs)' in text
  for modality in ('text', 'image', 'overall'):
    assert f'| {modality} | ' in text
  _rerun_reads_and_refuses(root, command, run, out,
                           [root / 'runs' / 'mot_study' / f'xs_{m}_seed2021' for m in
                            ('dense', 'mot')])


def _rerun_reads_and_refuses(root, command, run, out, workdirs, refuses: bool = True) -> None:
  """A rerun reads the finished runs (nothing retrained, the same CSV); with ``refuses``, other
  settings are refused as a run directory of another config (``study.check_same_run``)."""
  done = [w / 'results.json' for w in workdirs]
  mtimes = [p.stat().st_mtime for p in done]
  rows = _csv(out.with_suffix('.csv'))
  t0 = time.perf_counter()
  run(command)
  assert [p.stat().st_mtime for p in done] == mtimes
  assert time.perf_counter() - t0 < 60
  assert _csv(out.with_suffix('.csv')) == rows
  if not refuses:
    return
  with pytest.raises(AssertionError, match='holds a run of another config'):
    run(command + ' --warmup 0.1')
  del root


def moma_study(root: pathlib.Path, command: str, run) -> None:
  """scripts/moma_study.py reduced (dense and MoMa, two steps, one aux step): both phases in the
  CSV, the aux run forked with parameters only, the table and goals, and the cached rerun."""
  out = root / 'docs' / 'moma_study'
  rows = _csv(out.with_suffix('.csv'))
  assert {r['variant'] for r in rows} == {'dense', 'moma'}
  assert {r['phase'] for r in rows if r['variant'] == 'dense'} == {'main'}
  aux = [r for r in rows if r['phase'] == 'aux']
  assert aux and {r['variant'] for r in aux} == {'moma'}
  assert all(r['aux_router_loss'] for r in aux if r['split'] == 'train')
  runs = root / 'runs' / 'moma_study'
  results = json.loads((runs / 'xs_moma_seed2021_aux' / 'results.json').read_text())
  assert results['steps'] == int(rows[-1]['step'])  # a fresh start: its own steps only
  main = json.loads((runs / 'xs_moma_seed2021' / 'results.json').read_text())
  assert results['valid']['loss'] != main['valid']['loss']  # causal, not expert choice
  first = {r['variant']: r for r in rows}
  assert int(first['moma']['params']) > int(first['dense']['params'])
  assert 0.99 < float(first['moma']['flops_per_token']) / float(
      first['dense']['flops_per_token']) < 1.05  # compute matched: routers only
  _png(out.with_suffix('.png'))
  text = _markdown(out.with_suffix('.md'), command, 'scripts/moma_study.py')
  assert '**Size xs**' in text and '| moma |' in text and '| dense |' in text
  assert 'MoMa causal-inference loss within 2%' in text
  _rerun_reads_and_refuses(root, command, run, out,
                           [runs / f'xs_{v}' for v in ('dense_seed2021', 'moma_seed2021',
                                                       'moma_seed2021_aux')],
                           refuses=False)  # the same check_same_run as mot_study's


def moma_aux(root: pathlib.Path, command: str, run) -> None:
  """The MoMa run and its auxiliary-router fork (docs/moma.md): the fork started afresh (its own
  steps), updated the auxiliary routers and left every other parameter bit for bit, its router
  BCE fell, and its validation (causal routing) differs from the expert-choice validation of the
  same main weights."""
  del command, run
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxrec.train.evaluation import restore_for_inference  # pylint: disable=g-import-not-at-top
  from jaxrec.train.recipes import under_module  # pylint: disable=g-import-not-at-top
  main, aux = root / 'runs' / 'moma', root / 'runs' / 'moma_aux'
  main_results = json.loads((main / 'results.json').read_text())
  results = json.loads((aux / 'results.json').read_text())
  assert results['steps'] == main_results['steps']  # the same epoch, from step 0
  before = restore_for_inference(str(main))[2].params
  after = restore_for_inference(str(aux))[2].params
  mask = jax.tree.leaves(under_module(after, 'aux_router'))
  assert 0 < sum(mask) < len(mask)
  flat_b = jax.tree_util.tree_flatten_with_path(before)[0]
  flat_a = jax.tree_util.tree_flatten_with_path(after)[0]
  assert [p for p, _ in flat_b] == [p for p, _ in flat_a]
  for (path, a), (_, b), trains in zip(flat_b, flat_a, mask):
    if trains:
      assert not np.array_equal(a, b), path
    else:
      np.testing.assert_array_equal(a, b, err_msg=str(path))  # frozen, bit for bit
  lines = [json.loads(l) for l in open(aux / 'metrics.jsonl', encoding='utf-8')]
  train = [l for l in lines if l['split'] == 'train']
  assert train and all('aux_router_accuracy' in l and 'task_loss' in l for l in train)
  assert abs(results['valid']['loss'] - main_results['valid']['loss']) > 1e-6
