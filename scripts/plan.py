"""Plan a config's embedding tables.

    python scripts/plan.py --config configs/<name>.py --out plan.json [--devices 8]

Plans as ``config.embedding.plan=auto`` would at start-up (``jaxrec.train.planning``): the
model's tables, their features measured on the first training batch, the method
``config.embedding.planner`` (``--config.embedding.planner=torchrec`` to change it), the memory cap
``config.embedding.memory_cap_bytes``, ``--devices`` devices (default: this machine's) in
``config.embedding.hosts`` hosts. Writes the plan as JSON (usable as ``config.embedding.plan``)
and prints per device its tables, shards, bytes and predicted cost, and the plan's imbalance;
costs are predicted by the NeuroShard cost model (``config.embedding.cost_model``, or the one
shipped), or by TorchRec's analytic estimate when there is none.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxrec.planner import report  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxrec.train import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxrec.train import planning  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                          lock_config=True)
_OUT = flags.DEFINE_string('out', None, 'Where to write the plan (JSON).')
_DEVICES = flags.DEFINE_integer('devices', 0, 'Devices to plan for (0: this machine\'s).')
flags.mark_flags_as_required(['config', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  result = planning.plan_for_config(config, _DEVICES.value or None)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, 'w', encoding='utf-8') as f:
    f.write(result.plan.to_json() + '\n')
  model, note = planning.predictor(config.embedding.get('cost_model', ''), result.batch_size)
  print(report.describe(result.plan, result.features, model, result.batch_size, result.method))
  if note:
    print(note)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  cli.run(main, config_flag='config')
