"""Score a run's best checkpoint on any split file of its dataset.

    python scripts/evaluate.py --workdir DIR --split_file PATH

Prints one JSON object of the run's task metrics: for CTR {"auc": ..., "logloss": ..., "ne": ...,
"rows": ...}; for image classification {"accuracy": ..., "nll": ..., "ece": ..., "rows": ...}
(an IDX images file, its labels file found beside it). A user error (a missing or malformed file,
not a run directory) prints one line and exits with status 1.
"""

import json

from absl import app
from absl import logging
from absl import flags

from jaxrec.sharding import distributed
from jaxrec.train import cli
from jaxrec.train.evaluation import evaluate_split_file

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory written by scripts/train.py.')
_SPLIT_FILE = flags.DEFINE_string('split_file', None, "A split file in the run dataset's format.")
_CHECKPOINT = flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 0, 'Eval batch size (0: the run config).')
_CPU_DEVICES = flags.DEFINE_integer('cpu_devices', 0,
                                    'If > 0, emulate this many CPU devices (any count reads any '
                                    'run, whatever mesh or embedding plan it trained on).')
flags.mark_flags_as_required(['workdir', 'split_file'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  distributed.initialize(cpu_devices=_CPU_DEVICES.value)
  metrics = evaluate_split_file(_WORKDIR.value, _SPLIT_FILE.value, checkpoint=_CHECKPOINT.value,
                                batch_size=_BATCH_SIZE.value or None)
  print(json.dumps(metrics))


if __name__ == '__main__':
  cli.run(main)
