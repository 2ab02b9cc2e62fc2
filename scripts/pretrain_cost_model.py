"""Measure this device and pre-train NeuroShard's cost models (``jaxrec.planner.pretrain``).

    python scripts/pretrain_cost_model.py --samples 2000 --data runs/planner/cost_data.jsonl \
        [--stats ../shared/data/dlrm_datasets/2021/locality_stats.txt] \
        [--out jaxrec/planner/cost_model_cpu.npz]

Measures random device loads ``0 .. --samples - 1`` of ``dlrm-synth`` tables (1 to
``--max_tables`` tables, dims of ``--dims``, at most ``--max_bytes``; each the median of ``--runs``
timed steps after ``--warmup``), trains the compute model on them and communication models for
the meshes of ``--comm_meshes``, prints the held-out Kendall tau and relative error, and writes
the model file (by default the one ``jaxrec.planner`` ships and loads).

Resumable: ``--data`` keeps one line per measured load, appended as it is measured; a rerun with
the same settings measures only the loads the file lacks (``--samples`` is the total), and
``--samples 0`` re-trains from the file without measuring. ``--compile_cache`` keeps the compiled
steps across runs. ``--padding_check N`` first measures N loads both bucketed and with exact
shapes and prints the ratio (the cost of the bucketing's padding, ``jaxrec.planner.step``).
"""

import dataclasses
import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

from jaxrec.planner import cost_model as cm
from jaxrec.planner import pretrain
from jaxrec.planner import step
from jaxrec.planner.tasks import (DEFAULT_BATCH, DEFAULT_CAP, TRACE_DIMS, DlrmSynth,
                                  parse_locality_stats)
from jaxrec.train import cli
# pylint: enable=g-import-not-at-top,wrong-import-position

_STATS = flags.DEFINE_string('stats', '../shared/data/dlrm_datasets/2021/locality_stats.txt',
                             'locality_stats.txt of the trace to draw tables from.')
_SAMPLES = flags.DEFINE_integer('samples', 2000, 'Device loads the data file should hold (the '
                                'missing ones are measured); 0: train from the file only.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the loads (and of training).')
_BATCH = flags.DEFINE_integer('batch_size', DEFAULT_BATCH, 'Global batch of a measured step.')
_MAX_TABLES = flags.DEFINE_integer('max_tables', 15, 'Most tables in a load (NeuroShard: 15).')
_MAX_BYTES = flags.DEFINE_integer('max_bytes', DEFAULT_CAP, 'Most bytes in a load.')
_DIMS = flags.DEFINE_list('dims', [str(d) for d in TRACE_DIMS], 'Embedding dims to draw from.')
_RUNS = flags.DEFINE_integer('runs', 5, 'Timed steps per load.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed steps first (compilation is never timed).')
_IDS_PER_OCTAVE = flags.DEFINE_integer('ids_per_octave', 8, 'Bucket steps per power of two of '
                                       'the ids of a fused group (0: exact shapes).')
_EPOCHS = flags.DEFINE_integer('epochs', 200, 'Training epochs of the compute model.')
_COMM_EPOCHS = flags.DEFINE_integer('comm_epochs', 100, 'Training epochs of each comm model.')
_MESHES = flags.DEFINE_list('comm_meshes', ['1x2', '1x4', '1x8', '2x4'],
                            'Meshes (hosts x devices per host) to train comm models for.')
_DATA = flags.DEFINE_string('data', 'runs/planner/cost_data.jsonl',
                            'JSON-lines file of the measured loads (appended to; resumed from).')
_OUT = flags.DEFINE_string('out', '', 'The model file to write (default: the one jaxrec.planner '
                           'ships for this device platform).')
_CACHE = flags.DEFINE_string('compile_cache', 'runs/planner/jax_cache',
                             'Persistent compilation cache directory (\'\': none).')
_PADDING_CHECK = flags.DEFINE_integer('padding_check', 0, 'Loads to measure both bucketed and '
                                      'exact first (prints the padding\'s cost).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _CACHE.value:
    step.use_compile_cache(_CACHE.value)
  stats = parse_locality_stats(_STATS.value)[0]
  buckets = (step.Buckets(ids_per_octave=_IDS_PER_OCTAVE.value, buffer_bytes=_MAX_BYTES.value)
             if _IDS_PER_OCTAVE.value else step.Buckets.exact())
  header = {'kind': 'jaxrec planner cost data', 'trace': stats.trace, 'seed': _SEED.value,
            'batch_size': _BATCH.value, 'max_tables': _MAX_TABLES.value,
            'max_bytes': _MAX_BYTES.value, 'dims': [int(d) for d in _DIMS.value],
            'optimizer': 'rowwise_adagrad',
            'buckets': dataclasses.asdict(buckets), 'device_kind': jax.devices()[0].device_kind}
  data = pretrain.CostData(_DATA.value, header)
  gen = DlrmSynth(stats, batch_size=_BATCH.value)
  if _PADDING_CHECK.value:
    r = pretrain.padding_check(gen, _PADDING_CHECK.value, _SEED.value,
                               max_tables=_MAX_TABLES.value, max_bytes=_MAX_BYTES.value,
                               dims=header['dims'], runs=_RUNS.value, buckets=buckets, log=print)
    ratio = r[:, 0] / r[:, 1]
    print(f'padding check, {len(r)} loads: bucketed / exact median {np.median(ratio):.3f} '
          f'(quartiles {np.percentile(ratio, 25):.3f}, {np.percentile(ratio, 75):.3f}); ids '
          f'padded +{100 * r[:, 2].mean():.1f} % on average', flush=True)
  if _SAMPLES.value:
    have = len(data.samples)
    print(f'{_DATA.value or "(memory)"}: {have} loads measured, {len(data.missing(_SAMPLES.value))}'
          f' to measure', flush=True)
    t0 = time.perf_counter()
    pretrain.collect(gen, data, _SAMPLES.value, _SEED.value, max_tables=_MAX_TABLES.value,
                     max_bytes=_MAX_BYTES.value, dims=header['dims'], warmup=_WARMUP.value,
                     runs=_RUNS.value,
                     buckets=buckets, log=lambda m: print(m, flush=True))
    print(f'measured in {time.perf_counter() - t0:.0f} s', flush=True)
  samples = data.sorted()
  if len(samples) < 3:
    raise pretrain.CostDataError(f'{_DATA.value}: {len(samples)} measured loads; need >= 3 to '
                                 'train (pass --samples)')
  collected = pretrain.Collected.of(samples)
  meshes = [tuple(int(x) for x in m.split('x')) for m in _MESHES.value]
  model = pretrain.pretrain(collected, _BATCH.value, meshes, epochs=_EPOCHS.value,
                            comm_epochs=_COMM_EPOCHS.value, seed=_SEED.value,
                            meta={'trace': stats.trace, 'buckets': header['buckets']})
  out = _OUT.value or str(cm.default_file())
  cm.save(model, out)
  h = model.meta['held_out']
  mse = model.meta['compute_mse']
  print(f'{len(samples)} loads ({collected.seconds:.0f} s of measuring); compute model MSE '
        f'train {mse["train"]:.4g}, val {mse["val"]:.4g}, test {mse["test"]:.4g} ms^2; held out '
        f'({h["loads"]} loads): Kendall tau {h["kendall_tau"]:.3f}, relative error mean '
        f'{h["mean_rel_error"]:.3f}, median {h["median_rel_error"]:.3f}; wrote {out}')


if __name__ == '__main__':
  cli.run(main)
