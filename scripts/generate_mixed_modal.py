"""Samples class-conditioned images (a PNG grid) and a text continuation from a mixed-modal LM run.

    python scripts/generate_mixed_modal.py --workdir runs/mot_mixed_modal --out samples.png \
        [--checkpoint best] [--samples_per_class 8] [--temperature 1.0] [--seed 0] \
        [--text_prompt "This app"] [--text_tokens 64]

Restores ``--workdir`` (a ``scripts/train.py`` run of ``configs/mot_mixed_modal.py`` or
``configs/dense_mixed_modal.py``), samples ``--samples_per_class`` images of every class after
its caption (:func:`jaxrec.serving.mixed_modal_sampling.sample_images`: image codes only, exactly
one image's tokens) and writes them as a grid, one row per class; with ``--text_prompt`` it also
prints ``--text_tokens`` sampled tokens after the prompt (text only, cut at EOS). The same
``--seed`` gives the same samples. A user error (not a run directory, not a mixed-modal run)
prints one line and exits with status 1.
"""

import jax
from absl import flags
from absl import logging

from jaxrec.data.mixed_modal import MixedModalCodec
from jaxrec.errors import ConfigError
from jaxrec.serving.mixed_modal_sampling import sample_images, sample_text, save_image_grid
from jaxrec.train import cli
from jaxrec.train.evaluation import restore_for_inference

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory written by scripts/train.py.')
_OUT = flags.DEFINE_string('out', None, 'The PNG grid to write.')
_CHECKPOINT = flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint.')
_SAMPLES = flags.DEFINE_integer('samples_per_class', 8, 'Images per class (grid columns).',
                                lower_bound=1)
_TEMPERATURE = flags.DEFINE_float('temperature', 1.0, 'Sampling temperature (<= 0: greedy).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seeds the samples.')
_TEXT_PROMPT = flags.DEFINE_string('text_prompt', None, 'If set, also sample text after it.')
_TEXT_TOKENS = flags.DEFINE_integer('text_tokens', 64, 'Text tokens to sample.', lower_bound=1)
flags.mark_flags_as_required(['workdir', 'out'])


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  config, model, state, data_state = restore_for_inference(_WORKDIR.value, _CHECKPOINT.value)
  if config.model != 'decoder_lm':
    raise ConfigError(f'{_WORKDIR.value}: its model is {config.model!r}, not the mixed-modal '
                      "'decoder_lm'")
  codec = MixedModalCodec.from_state(data_state)
  image_key, text_key = jax.random.split(jax.random.PRNGKey(_SEED.value))
  samples = sample_images(model, state.params, codec, image_key,
                          samples_per_class=_SAMPLES.value, temperature=_TEMPERATURE.value)
  save_image_grid(samples, _OUT.value,
                  title=f'{_WORKDIR.value} ({_CHECKPOINT.value}, untie '
                  f'{config.model_kwargs.get("untie", "none")}), T={_TEMPERATURE.value:g}, '
                  f'seed {_SEED.value}')
  print(f'wrote {_OUT.value}: {len(samples.class_names)} classes x {_SAMPLES.value} samples')
  if _TEXT_PROMPT.value is not None:
    try:
      text = sample_text(model, state.params, codec, _TEXT_PROMPT.value, text_key,
                         num_tokens=_TEXT_TOKENS.value, temperature=_TEMPERATURE.value)
    except ValueError as e:  # the prompt and --text_tokens exceed the model's context
      raise ConfigError(f'--text_prompt / --text_tokens: {e}') from None
    print(f'text: {_TEXT_PROMPT.value}{text.texts[0]}')


if __name__ == '__main__':
  cli.run(main)
