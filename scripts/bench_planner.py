"""The planner benchmark: every method on generated dlrm-synth tasks, every plan measured.

    python scripts/bench_planner.py --tasks 100 --task_seed 0 --devices 4 --out runs/bench_planner

Generates ``--tasks`` tasks (``jaxrec.planner.tasks.DlrmSynth``: 10-60 tables of Meta's 2021
trace statistics, ``--devices`` devices of ``--memory_cap_bytes``), plans each with every method
of ``--methods`` and measures every plan on this device (``jaxrec.planner.bench``: the slowest
device's measured step plus its analytic all-to-all). Writes ``<out>/planner.csv`` (method, task,
max_cost_ms (empty: no fit), fits, plan_seconds), ``<out>/planner.md`` (fits, mean cost over the
tasks every method fits, plan times, the gains of neuroshard over torchrec and the best greedy
baseline and of refinement) and ``<out>/planner.png``. Resumable: each task's results are kept
in ``<out>/tasks/`` as it ends. The neuroshard methods need a pre-trained cost model
(``--cost_model``, default the one jaxrec ships for this device: scripts/pretrain_cost_model.py).
"""

import hashlib
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from jaxrec import planner
from jaxrec.planner import bench
from jaxrec.planner import cost_model as cm
from jaxrec.planner import step
from jaxrec.planner.tasks import (DEFAULT_BATCH, DEFAULT_CAP, TABLES_RANGE, TRACE_DIMS, DlrmSynth,
                                  parse_locality_stats)
from jaxrec.train import cli
# pylint: enable=g-import-not-at-top,wrong-import-position

_TASKS = flags.DEFINE_integer('tasks', 100, 'Tasks to generate and plan.')
_TASK_SEED = flags.DEFINE_integer('task_seed', 0, 'Seed of the tasks.')
_DEVICES = flags.DEFINE_integer('devices', 4, 'Devices of a task.')
_HOSTS = flags.DEFINE_integer('hosts', 1, 'Hosts the devices are split into.')
_OUT = flags.DEFINE_string('out', None, 'Output directory.')
_COST_MODEL = flags.DEFINE_string('cost_model', '', 'Cost-model file of the neuroshard methods '
                                  '(default: the one jaxrec ships for this device platform).')
_STATS = flags.DEFINE_string('stats', '../shared/data/dlrm_datasets/2021/locality_stats.txt',
                             'locality_stats.txt of the trace to draw tables from.')
_BATCH = flags.DEFINE_integer('batch_size', DEFAULT_BATCH, 'Global batch of the tasks.')
_CAP = flags.DEFINE_integer('memory_cap_bytes', DEFAULT_CAP, 'Embedding bytes per device.')
_TABLES = flags.DEFINE_list('tables', [str(x) for x in TABLES_RANGE],
                            'Tables per task: low, high (exclusive).')
_DIMS = flags.DEFINE_list('dims', [str(d) for d in TRACE_DIMS], 'Embedding dims to draw from.')
_METHODS = flags.DEFINE_list('methods', list(planner.METHODS), 'Planner methods to compare.')
_RUNS = flags.DEFINE_integer('runs', 5, 'Timed steps per device.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed steps first (compilation is never timed).')
_IDS_PER_OCTAVE = flags.DEFINE_integer('ids_per_octave', 8, 'Bucket steps per power of two of '
                                       'the ids of a fused group (jaxrec.planner.step).')
_CACHE = flags.DEFINE_string('compile_cache', 'runs/planner/jax_cache',
                             'Persistent compilation cache directory (\'\': none).')
flags.mark_flags_as_required(['out'])


def _cost_model():
  if not set(_METHODS.value) & set(planner.NEEDS_COST_MODEL):
    return None, ''
  model = planner.load_cost_model(_COST_MODEL.value or None)
  batch = int(model.meta.get('batch_size', _BATCH.value))
  if batch != _BATCH.value:
    raise planner.PlannerError(f'the cost model was measured at batch {batch}, the tasks are at '
                               f'batch {_BATCH.value}: pass --batch_size {batch} or another '
                               '--cost_model')
  path = _COST_MODEL.value or str(cm.default_file())
  with open(path, 'rb') as f:
    return model, hashlib.sha256(f.read()).hexdigest()[:16]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  unknown = sorted(set(_METHODS.value) - set(planner.METHODS))
  if unknown:
    raise app.UsageError(f'unknown methods {unknown}; choose from {planner.METHODS}')
  if _DEVICES.value % _HOSTS.value:
    raise app.UsageError(f'--devices {_DEVICES.value} does not split into {_HOSTS.value} hosts')
  model, model_hash = _cost_model()
  if _CACHE.value:
    step.use_compile_cache(_CACHE.value)
  stats = parse_locality_stats(_STATS.value)[0]
  lo, hi = (int(x) for x in _TABLES.value)
  dims = tuple(int(d) for d in _DIMS.value)
  gen = DlrmSynth(stats, batch_size=_BATCH.value)
  tasks = gen.tasks(_TASKS.value, _TASK_SEED.value, _DEVICES.value, _CAP.value, (lo, hi), dims)
  settings = {'trace': stats.trace, 'task_seed': _TASK_SEED.value, 'devices': _DEVICES.value,
              'hosts': _HOSTS.value, 'memory_cap_bytes': _CAP.value, 'batch_size': _BATCH.value,
              'tables': [lo, hi], 'dims': list(dims), 'methods': list(_METHODS.value),
              'runs': _RUNS.value, 'warmup': _WARMUP.value,
              'ids_per_octave': _IDS_PER_OCTAVE.value, 'cost_model': model_hash,
              'device_kind': jax.devices()[0].device_kind}
  os.makedirs(_OUT.value, exist_ok=True)
  buckets = step.Buckets(ids_per_octave=_IDS_PER_OCTAVE.value, buffer_bytes=_CAP.value)
  results = bench.run_benchmark(tasks, _METHODS.value, model, _OUT.value, settings,
                                num_hosts=_HOSTS.value, warmup=_WARMUP.value, runs=_RUNS.value,
                                buckets=buckets, log=lambda m: print(m, flush=True))
  summary = bench.summarize(results, _METHODS.value)
  bench.write_csv(results, os.path.join(_OUT.value, 'planner.csv'))
  command = 'python scripts/bench_planner.py ' + ' '.join(sys.argv[1:])
  md = bench.markdown(summary, settings, command)
  with open(os.path.join(_OUT.value, 'planner.md'), 'w', encoding='utf-8') as f:
    f.write(md)
  bench.plot(results, summary, _METHODS.value, os.path.join(_OUT.value, 'planner.png'))
  print(md)


if __name__ == '__main__':
  cli.run(main)
