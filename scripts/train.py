"""Train a model: ``python scripts/train.py --config configs/<name>.py --workdir DIR``.

CTR models on tabular data and image classifiers on image data (the task follows the dataset;
``config.recipe`` adds label smoothing, DLB or SMC: docs/smc.md).

Any config field can be overridden, e.g. ``--config.data_dir=../shared/data/frappe
--config.seed=1 --config.sharding.strategy=FULL_SHARD``; a dataset's options are
``--config.dataset_options.<dataset>.<option>`` (jaxrec/train/config.py).

Re-running with the same workdir resumes the run from its latest checkpoint; the config may then
change only in the fields of ``jaxrec.train.run_config.RESUMABLE_FIELDS`` (``num_epochs``,
``max_steps``, logging): any other difference is an error listing the fields. To change
hyperparameters use a new ``--workdir``, optionally ``--fork_from=OLD_WORKDIR`` to start it from
the old run's latest checkpoint; ``--override_config_check`` resumes with the new values anyway.
User errors (data, config, plan, run directory) print one line and exit with status 1.

Multi-host: start one process per host with ``--coordinator_address=HOST:PORT
--num_processes=N --process_id=I`` (or the ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
``JAX_PROCESS_ID`` environment variables) and the same config and (shared) workdir; each process
reads its rows of every batch and only process 0 writes logs. ``--cpu_devices=K`` emulates K CPU
devices per process.
"""

import json
import sys

import jax
from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

from jaxrec.sharding import distributed
from jaxrec.train import cli
from jaxrec.train.loop import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics, results).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0 of a multi-process run.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes of a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process (0 .. num_processes - 1).')
_CPU_DEVICES = flags.DEFINE_integer('cpu_devices', 0, 'If > 0, emulate this many CPU devices.')
_OVERRIDE = flags.DEFINE_boolean(
    'override_config_check', False,
    'Resume a workdir even though the config differs from its config.json in fields that change '
    'the run (the stored config.json is replaced). To change hyperparameters, prefer a new '
    '--workdir.')
_FORK_FROM = flags.DEFINE_string(
    'fork_from', None, 'Start the new --workdir from the latest (and best) checkpoint of this run '
    'directory; the config may differ (not the data or parameter shapes).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  cli.check_dataset_overrides(_CONFIG.value, sys.argv)
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         cpu_devices=_CPU_DEVICES.value)
  results = train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                               override_config_check=_OVERRIDE.value, fork_from=_FORK_FROM.value)
  if jax.process_index() == 0:
    summary = {k: v for k, v in results.items() if k != 'history'}
    print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == '__main__':
  cli.run(main, config_flag='config')
