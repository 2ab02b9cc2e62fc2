"""Measure this device and pre-train NeuroShard's cost models (``jaxrec.planner.pretrain``).

    python scripts/pretrain_cost_model.py --samples 2000 \
        [--stats ../shared/data/dlrm_datasets/2021/locality_stats.txt] \
        [--data runs/cost_data.json] [--out jaxrec/planner/cost_model_cpu.npz]

Measures ``--samples`` random device loads of ``dlrm-synth`` tables (1 to ``--max_tables``
tables, dims 4..128, at most ``--max_bytes``; each the median of ``--runs`` timed steps after
``--warmup``), trains the compute model on them and communication models for the meshes of
``--comm_meshes``, and writes the model file (by default the one ``jaxrec.planner`` ships and
loads). ``--data`` keeps the measurements (appended to, so an interrupted campaign resumes) and
``--epochs`` re-trains from them without measuring again (``--samples 0``). A load takes about
8 s on a 2-core CPU (batch 1024, compilation included): 2000 loads are about 4.5 hours.
"""

import json
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxrec.planner import cost_model as cm
from jaxrec.planner import pretrain
from jaxrec.planner.features import TableFeatures
from jaxrec.planner.tasks import DEFAULT_BATCH, DEFAULT_CAP, DlrmSynth, parse_locality_stats
from jaxrec.train import cli
# pylint: enable=g-import-not-at-top,wrong-import-position

_STATS = flags.DEFINE_string('stats', '../shared/data/dlrm_datasets/2021/locality_stats.txt',
                             'locality_stats.txt of the trace to draw tables from.')
_SAMPLES = flags.DEFINE_integer('samples', 2000, 'Device loads to measure now.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the loads (and of training).')
_BATCH = flags.DEFINE_integer('batch_size', DEFAULT_BATCH, 'Global batch of a measured step.')
_MAX_TABLES = flags.DEFINE_integer('max_tables', 15, 'Most tables in a load (NeuroShard: 15).')
_MAX_BYTES = flags.DEFINE_integer('max_bytes', DEFAULT_CAP, 'Most bytes in a load.')
_RUNS = flags.DEFINE_integer('runs', 10, 'Timed steps per load.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps first (compilation included).')
_EPOCHS = flags.DEFINE_integer('epochs', 200, 'Training epochs of the compute model.')
_MESHES = flags.DEFINE_list('comm_meshes', ['1x2', '1x4', '1x8', '2x4'],
                            'Meshes (hosts x devices per host) to train comm models for.')
_DATA = flags.DEFINE_string('data', '', 'JSON file keeping the measurements (appended to).')
_OUT = flags.DEFINE_string('out', '', 'The model file to write (default: the one jaxrec.planner '
                           'ships for this device platform).')


def _load_data(path):
  if not path or not os.path.isfile(path):
    return pretrain.Collected([], [], [], 0.0)
  with open(path, encoding='utf-8') as f:
    d = json.load(f)
  loads = [[TableFeatures(t['name'], t['rows'], t['dim'], t['pooling'], tuple(t['hist']))
            for t in load] for load in d['loads']]
  return pretrain.Collected(loads, d['costs_ms'], [tuple(s) for s in d['spreads']], d['seconds'])


def _save_data(path, data):
  loads = [[{'name': t.name, 'rows': t.rows, 'dim': t.dim, 'pooling': t.pooling,
             'hist': list(t.hist)} for t in load] for load in data.loads]
  with open(path, 'w', encoding='utf-8') as f:
    json.dump({'loads': loads, 'costs_ms': data.costs_ms, 'spreads': data.spreads,
               'seconds': data.seconds}, f)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  data = _load_data(_DATA.value)
  if _SAMPLES.value:
    gen = DlrmSynth(parse_locality_stats(_STATS.value)[0], batch_size=_BATCH.value)
    new = pretrain.collect_compute(gen, _SAMPLES.value, _SEED.value + len(data.costs_ms),
                                   max_tables=_MAX_TABLES.value, max_bytes=_MAX_BYTES.value,
                                   warmup=_WARMUP.value, runs=_RUNS.value, log=print)
    data = pretrain.Collected(data.loads + new.loads, data.costs_ms + new.costs_ms,
                              data.spreads + new.spreads, data.seconds + new.seconds)
    if _DATA.value:
      _save_data(_DATA.value, data)
  meshes = [tuple(int(x) for x in m.split('x')) for m in _MESHES.value]
  model = pretrain.pretrain(data, _BATCH.value, meshes, epochs=_EPOCHS.value, seed=_SEED.value)
  out = _OUT.value or str(cm.default_file())
  cm.save(model, out)
  print(f'{len(data.costs_ms)} loads ({data.seconds:.0f} s of measuring); compute model MSE '
        f'{model.meta["compute_mse"]}; wrote {out}')


if __name__ == '__main__':
  cli.run(main)
