"""The planner benchmark (``scripts/bench_planner.py``): every method on generated tasks, measured.

Per task (``run_task``), every method of ``planner.METHODS`` plans the task's tables for its
devices under their memory cap (``plan_seconds``: wall time of ``planner.plan``); a method that
finds no placement (``PlannerError``, ``NoFitError`` included) *fails* the task. Each plan that
fits is measured on this device (``measure.measure_plan``): per device the measured step of its
shards plus the analytic all-to-all, the plan's cost the slowest device's (``max_cost_ms``), not
the cost model's prediction. All methods of a task share its ids (``seed``: the task's index), so
a device whose shards equal one measured before in the task reuses that timing.

Summaries (``summarize``) never drop a failure from one method alone:
  * ``fits``: tasks each method planned;
  * the mean measured cost per method is over the *common* tasks, those every method fits;
  * a comparison of ``a`` with ``b`` (``compare``) runs over all tasks: a task where ``a`` fits
    and ``b`` does not is a win for ``a`` (and the reverse a loss), one where neither fits is a
    tie; the relative gain ``1 - cost_a / cost_b`` is averaged over the tasks both fit, beside
    the gain of the means on those tasks. The best greedy baseline of a task is the cheapest of
    the four greedy methods that fit it (an oracle choice: the strongest baseline).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import time
from typing import Callable, Optional, Sequence

import numpy as np

from jaxrec import planner
from jaxrec.errors import UserError
from jaxrec.planner import measure
from jaxrec.planner.placement import PlannerError
from jaxrec.planner.step import Buckets, StepCache
from jaxrec.planner.tasks import Task

GREEDY = ('size_greedy', 'dim_greedy', 'lookup_greedy', 'size_lookup_greedy')
BEST_GREEDY = 'best_greedy'
COMPARISONS = (('neuroshard', 'torchrec'), ('neuroshard', BEST_GREEDY),
               ('neuroshard_refined', 'neuroshard'), ('neuroshard_refined', 'torchrec'))
CSV_FIELDS = ('method', 'task', 'max_cost_ms', 'fits', 'plan_seconds')


@dataclasses.dataclass(frozen=True)
class Result:
  """One method on one task.

  Attributes:
    method, task: which.
    fits: whether the method planned the task.
    plan_seconds: planning wall time.
    max_cost_ms: the measured plan's cost (None when it does not fit).
    compute_ms, comm_ms: per device, the measured step's median and the all-to-all.
    spread_ms: per device, the step's (p25, p75).
    error: why it does not fit.
  """
  method: str
  task: int
  fits: bool
  plan_seconds: float
  max_cost_ms: Optional[float] = None
  compute_ms: tuple[float, ...] = ()
  comm_ms: tuple[float, ...] = ()
  spread_ms: tuple[tuple[float, float], ...] = ()
  error: str = ''

  def csv_row(self) -> dict:
    return {'method': self.method, 'task': self.task,
            'max_cost_ms': '' if self.max_cost_ms is None else f'{self.max_cost_ms:.4f}',
            'fits': int(self.fits), 'plan_seconds': f'{self.plan_seconds:.4f}'}


def run_task(task: Task, methods: Sequence[str], cost_model, *, num_hosts: int = 1,
             warmup: int = 1, runs: int = 5, buckets: Optional[Buckets] = None,
             cache: Optional[StepCache] = None,
             log: Optional[Callable[[str], None]] = None) -> list[Result]:
  """Every method on ``task``, each plan measured (module docstring; ``buckets`` default: the
  fused buffers sized by the task's memory cap). ``cost_model`` None: the shipped one, whose
  absence is an error, not a failure of the neuroshard methods."""
  if cost_model is None and set(methods) & set(planner.NEEDS_COST_MODEL):
    cost_model = planner.load_cost_model()
  per_host = task.num_devices // num_hosts
  buckets = buckets or Buckets(buffer_bytes=task.memory_cap_bytes)
  known: dict = {}
  out = []
  for method in methods:
    t0 = time.perf_counter()
    try:
      plan = planner.plan(task.tables, (num_hosts, per_host), task.memory_cap_bytes, method,
                          cost_model=cost_model, batch_size=task.batch_size, seed=task.index)
    except PlannerError as e:
      out.append(Result(method, task.index, False, time.perf_counter() - t0, error=str(e)))
      if log:
        log(f'task {task.index} {method}: does not fit ({e})')
      continue
    seconds = time.perf_counter() - t0
    m = measure.measure_plan(plan, task.tables, task.batch_size, seed=task.index, warmup=warmup,
                             runs=runs, buckets=buckets, cache=cache, known=known)
    out.append(Result(method, task.index, True, seconds, m.max_ms,
                      tuple(c.median_ms for c in m.compute), m.comm_ms,
                      tuple((c.p25_ms, c.p75_ms) for c in m.compute)))
    if log:
      log(f'task {task.index} {method}: {m.max_ms:.2f} ms measured (planned in {seconds:.2f} s)')
  return out


# ---- the per-task cache -------------------------------------------------------------------------

def task_file(root, index: int) -> pathlib.Path:
  return pathlib.Path(root) / 'tasks' / f'task_{index:04d}.json'


def save_task(root, index: int, results: Sequence[Result], settings: dict) -> None:
  path = task_file(root, index)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps({'settings': settings,
                             'results': [dataclasses.asdict(r) for r in results]}),
                 encoding='utf-8')
  tmp.replace(path)


class BenchSettingsError(UserError, ValueError):
  """A benchmark directory holding tasks measured with other settings."""


def load_task(root, index: int, settings: dict) -> Optional[list[Result]]:
  """The cached results of task ``index`` (None if not measured yet);
  ``BenchSettingsError`` if they were measured with other ``settings``."""
  path = task_file(root, index)
  if not path.is_file():
    return None
  d = json.loads(path.read_text(encoding='utf-8'))
  old = d.get('settings', {})
  if old != settings:
    diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    said = ', '.join(f'{k}: {old.get(k)!r} there, {settings.get(k)!r} now' for k in diff)
    raise BenchSettingsError(f'{path} was measured with other settings ({said}); use another '
                             'output directory or delete its tasks/ folder')
  out = []
  for r in d['results']:
    r = dict(r, compute_ms=tuple(r['compute_ms']), comm_ms=tuple(r['comm_ms']),
             spread_ms=tuple(tuple(s) for s in r['spread_ms']))
    out.append(Result(**r))
  return out


def run_benchmark(tasks: Sequence[Task], methods: Sequence[str], cost_model, root,
                  settings: dict, *, num_hosts: int = 1, warmup: int = 1, runs: int = 5,
                  buckets: Optional[Buckets] = None, cache: Optional[StepCache] = None,
                  log: Optional[Callable[[str], None]] = None) -> list[Result]:
  """``run_task`` on every task not cached under ``root`` (``tasks/task_NNNN.json``, written as
  each task ends), the cached ones read back: an interrupted benchmark resumes."""
  cache = cache or StepCache()
  out = []
  t_start, measured = time.perf_counter(), 0
  for i, task in enumerate(tasks):
    results = load_task(root, task.index, settings)
    if results is None:
      results = run_task(task, methods, cost_model, num_hosts=num_hosts, warmup=warmup,
                         runs=runs, buckets=buckets, cache=cache)
      save_task(root, task.index, results, settings)
      measured += 1
      if log:
        per = (time.perf_counter() - t_start) / measured
        left = sum(not task_file(root, t.index).is_file() for t in tasks[i + 1:])
        log(f'[{i + 1}/{len(tasks)}] task {task.index}: {len(task.tables)} tables; '
            + ', '.join(f'{r.method} {r.max_cost_ms:.2f}' if r.fits else f'{r.method} no fit'
                        for r in results)
            + f' ms; {per:.1f} s/task, {left * per / 60:.1f} min left; {cache.compiles} '
            f'programs compiled ({cache.compile_seconds:.0f} s)')
    out.extend(results)
  return out


# ---- summaries ----------------------------------------------------------------------------------

def _costs(results: Sequence[Result]) -> dict[str, dict[int, Optional[float]]]:
  """``{method: {task: cost or None}}``, with ``best_greedy`` added when every greedy method
  ran."""
  out: dict[str, dict[int, Optional[float]]] = {}
  for r in results:
    out.setdefault(r.method, {})[r.task] = r.max_cost_ms if r.fits else None
  if all(g in out for g in GREEDY):
    tasks = sorted(set().union(*(out[g] for g in GREEDY)))
    out[BEST_GREEDY] = {}
    for t in tasks:
      fit = [out[g].get(t) for g in GREEDY if out[g].get(t) is not None]
      out[BEST_GREEDY][t] = min(fit) if fit else None
  return out


@dataclasses.dataclass(frozen=True)
class Comparison:
  """``a`` against ``b`` over ``tasks`` tasks (module docstring)."""
  a: str
  b: str
  tasks: int
  both_fit: int
  wins: int  # a cheaper, or a fits and b does not
  losses: int
  ties: int
  mean_gain: float  # mean over both-fit tasks of 1 - a / b (nan if none)
  gain_of_means: float  # 1 - mean(a) / mean(b) over both-fit tasks


def compare(costs: dict, a: str, b: str, tie_rel: float = 0.0) -> Comparison:
  """``a`` vs ``b`` (module docstring); costs within ``tie_rel`` of each other tie."""
  tasks = sorted(set(costs[a]) | set(costs[b]))
  wins = losses = ties = 0
  ca, cb = [], []
  for t in tasks:
    x, y = costs[a].get(t), costs[b].get(t)
    if x is None and y is None:
      ties += 1
    elif y is None:
      wins += 1
    elif x is None:
      losses += 1
    else:
      ca.append(x)
      cb.append(y)
      if abs(x - y) <= tie_rel * max(x, y):
        ties += 1
      elif x < y:
        wins += 1
      else:
        losses += 1
  ca, cb = np.asarray(ca), np.asarray(cb)
  mean_gain = float(np.mean(1 - ca / cb)) if ca.size else float('nan')
  gain_means = float(1 - ca.mean() / cb.mean()) if ca.size else float('nan')
  return Comparison(a, b, len(tasks), int(ca.size), wins, losses, ties, mean_gain, gain_means)


@dataclasses.dataclass(frozen=True)
class MethodSummary:
  method: str
  tasks: int
  fits: int
  common_mean_ms: float  # mean measured cost over the tasks every method fits
  common_median_ms: float
  plan_seconds_mean: float
  plan_seconds_max: float


@dataclasses.dataclass(frozen=True)
class Summary:
  tasks: int
  common_tasks: tuple[int, ...]
  methods: tuple[MethodSummary, ...]
  comparisons: tuple[Comparison, ...]


def summarize(results: Sequence[Result], methods: Sequence[str],
              comparisons=COMPARISONS) -> Summary:
  """The benchmark's tables (module docstring)."""
  costs = _costs(results)
  tasks = sorted({r.task for r in results})
  common = tuple(t for t in tasks if all(costs.get(m, {}).get(t) is not None for m in methods))
  rows = []
  for m in methods:
    mine = [r for r in results if r.method == m]
    c = np.array([costs[m][t] for t in common], np.float64)
    secs = np.array([r.plan_seconds for r in mine], np.float64)
    rows.append(MethodSummary(m, len(mine), sum(r.fits for r in mine),
                              float(c.mean()) if c.size else float('nan'),
                              float(np.median(c)) if c.size else float('nan'),
                              float(secs.mean()) if secs.size else float('nan'),
                              float(secs.max()) if secs.size else float('nan')))
  comps = tuple(compare(costs, a, b) for a, b in comparisons if a in costs and b in costs)
  return Summary(len(tasks), common, tuple(rows), comps)


def markdown(summary: Summary, settings: dict, command: str = '') -> str:
  """``planner.md``: the settings, the per-method table and the comparisons."""
  lines = ['# Planner benchmark', '']
  if command:
    lines += [f'Command: `{command}`', '']  # inline: a fenced block would be a doc command
  lines += ['Settings: ' + ', '.join(f'{k} {v}' for k, v in settings.items()) + '.', '',
            f'{summary.tasks} tasks; {len(summary.common_tasks)} fit by every method (the mean '
            'cost is over those). Cost: the slowest device\'s measured step (median) plus its '
            'analytic all-to-all, ms. A plan that does not fit is a failure: counted in `fits`, '
            'a loss in every comparison, never dropped from one method\'s mean alone.', '',
            '| method | fits | mean cost (common tasks), ms | median, ms | plan time mean / max, '
            's |', '|---|---|---|---|---|']
  for m in summary.methods:
    lines.append(f'| {m.method} | {m.fits}/{m.tasks} | {m.common_mean_ms:.3f} | '
                 f'{m.common_median_ms:.3f} | {m.plan_seconds_mean:.2f} / '
                 f'{m.plan_seconds_max:.2f} |')
  lines += ['', '| a vs b | tasks | both fit | wins / losses / ties of a | mean gain of a '
            '| gain of the means |', '|---|---|---|---|---|---|']
  for c in summary.comparisons:
    lines.append(f'| {c.a} vs {c.b} | {c.tasks} | {c.both_fit} | {c.wins} / {c.losses} / '
                 f'{c.ties} | {100 * c.mean_gain:+.1f} % | {100 * c.gain_of_means:+.1f} % |')
  lines += ['', f'Gain: `1 - cost_a / cost_b` (positive: `a` is cheaper), over the tasks both '
            f'fit. `{BEST_GREEDY}`: per task the cheapest greedy baseline that fits it.', '']
  return '\n'.join(lines)


def plot(results: Sequence[Result], summary: Summary, methods: Sequence[str], path) -> None:
  """``planner.png``: mean measured cost per method on the common tasks, and per task each
  method's cost over TorchRec's (or the first method's)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  costs = _costs(results)
  ref = 'torchrec' if 'torchrec' in methods else methods[0]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
  x = np.arange(len(methods))
  ax1.bar(x, [m.common_mean_ms for m in summary.methods], color='tab:blue')
  for i, m in enumerate(summary.methods):
    ax1.annotate(f'{m.fits}/{m.tasks}', (i, m.common_mean_ms), ha='center', va='bottom',
                 fontsize=8)
  ax1.set_xticks(x, methods, rotation=35, ha='right')
  ax1.set_ylabel(f'mean measured cost, ms ({len(summary.common_tasks)} common tasks)')
  ax1.set_title('plan cost (labels: tasks fit)')
  ratios = []
  for m in methods:
    r = [costs[m][t] / costs[ref][t] for t in costs[m]
         if costs[m][t] is not None and costs[ref].get(t) is not None]
    ratios.append(r or [np.nan])
  ax2.boxplot(ratios)
  ax2.axhline(1.0, color='gray', lw=0.8)
  ax2.set_xticks(x + 1, methods, rotation=35, ha='right')
  ax2.set_ylabel(f'cost / {ref} cost, per task (both fit)')
  ax2.set_title(f'against {ref}')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_csv(results: Sequence[Result], path) -> None:
  """``planner.csv``: one row per method and task (``CSV_FIELDS``; empty cost: no fit)."""
  with open(path, 'w', newline='', encoding='utf-8') as f:
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in results:
      w.writerow(r.csv_row())
