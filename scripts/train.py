"""Train a CTR model: ``python scripts/train.py --config configs/<name>.py --workdir DIR``.

Any config field can be overridden, e.g. ``--config.data_dir=../shared/data/frappe
--config.seed=1``. Re-running with the same workdir resumes the run from its latest checkpoint.
"""

import json

from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

from jaxrec.train.loop import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics, results).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  results = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  summary = {k: v for k, v in results.items() if k != 'history'}
  print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == '__main__':
  app.run(main)
