"""Sampling from a trained mixed-modal decoder LM: class-conditioned images and text continuations.

Both go through :func:`jaxrec.models.mixed_modal_lm.generate` (one cached prefill, then a
``lax.scan`` of sampled steps) with a ``logits_fn`` that constrains the vocabulary:

* :func:`sample_images`: for each class, the prompt is laid out as the data pipeline lays out an
  image block (:mod:`jaxrec.data.mixed_modal`): ``BOS`` (a description start), the class caption
  (``caption_text(name)``, e.g. ``' a photo of a trouser:'``, tokenized by the run's BPE), then
  ``BOI``. Exactly ``tokens_per_image`` tokens are sampled, every logit outside the image codes
  ``[image_offset, image_offset + codebook_size)`` set to ``-inf``; their modality id is 1 (image).
  The codes are decoded to pixels by the run's codebook. All classes x samples run in ONE
  ``generate`` call: captions differ in length, so shorter prompts are filled on the LEFT with
  more BOS tokens (the LM has no padding mask; BOS is a token the model sees before text, while
  PAD only ever ends a row), keeping every caption's ``caption BOI`` suffix and its position
  relative to the sampled codes.
* :func:`sample_text`: ``BOS`` + the tokenized prompt, then ``num_tokens`` tokens restricted to
  text ids, BOS and EOS (image codes, BOI, EOI and PAD are masked: an image cannot be produced
  token by token under a text-only mask, and PAD ends rows). The string is the text up to the
  first EOS (or BOS, which in the data only follows an EOS).

Sampling is a pure function of the parameters, the prompt and ``rng`` (same key, same samples).
``model`` may be the trainer's ``DecoderLM`` with the run's parameters (``{'lm': ...}``), or the
``MixedModalLM`` with its own.

Example (a run of ``scripts/train.py --config configs/mot_mixed_modal.py``)::

  config, model, state, data_state = restore_for_inference(workdir, 'best')
  codec = MixedModalCodec.from_state(data_state)
  samples = sample_images(model, state.params, codec, jax.random.PRNGKey(0), samples_per_class=8)
  samples.images                   # uint8 [classes, 8, 28, 28]
  save_image_grid(samples, 'samples.png')
  sample_text(model, state.params, codec, 'This app', jax.random.PRNGKey(1)).texts[0]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.mixed_modal import IMAGE, TEXT, MixedModalCodec
from jaxrec.data.schema import SequenceSchema
from jaxrec.models.mixed_modal_lm import DecoderLM, MixedModalLM, generate

PyTree = Any
LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class ImageSamples:
  """Images sampled for classes.

  Attributes:
    class_names: the name of each sampled class (rows of the arrays).
    classes: ``int [C]``, their indices in ``schema.class_names``.
    prompts: ``int32 [C, P]``, each class's prompt (left-filled with BOS to a common length).
    tokens: ``int32 [C, S, tokens_per_image]``, the sampled token ids (all image codes).
    codes: ``int32 [C, S, tokens_per_image]``, ``tokens - image_offset`` (codebook indices).
    images: ``uint8 [C, S, H, W]``, the codes decoded by the codebook.
  """
  class_names: tuple[str, ...]
  classes: np.ndarray
  prompts: np.ndarray
  tokens: np.ndarray
  codes: np.ndarray
  images: np.ndarray


@dataclasses.dataclass(frozen=True)
class TextSamples:
  """Text continuations of one prompt.

  Attributes:
    prompt: ``int32 [P]``, BOS and the prompt's tokens.
    tokens: ``int32 [N, num_tokens]``, every sampled id (past the first EOS too).
    texts: ``N`` strings: each sample decoded up to its first EOS / BOS.
  """
  prompt: np.ndarray
  tokens: np.ndarray
  texts: tuple[str, ...]


def _lm_and_params(model: Any, params: PyTree) -> tuple[MixedModalLM, PyTree]:
  """The ``MixedModalLM`` and its parameters, from a ``DecoderLM`` (params ``{'lm': ...}``) or a
  ``MixedModalLM``."""
  if isinstance(model, DecoderLM):
    try:
      return model.lm(), params['lm']
    except (KeyError, TypeError):
      keys = list(params.keys()) if hasattr(params, 'keys') else type(params).__name__
      raise ValueError("mixed_modal_sampling: a DecoderLM's parameters hold its LM under 'lm' "
                       f'(state.params of a run); got {keys}') from None
  if isinstance(model, MixedModalLM):
    return model, params
  raise TypeError(f'mixed_modal_sampling: model must be a DecoderLM or MixedModalLM, got '
                  f'{type(model).__name__}')


def _check_vocab(lm: MixedModalLM, schema: SequenceSchema) -> None:
  if lm.vocab_size != schema.vocab_size:
    raise ValueError(f'mixed_modal_sampling: the model has {lm.vocab_size} tokens, the schema '
                     f'{schema.vocab_size} (a codec of another run?)')


def allowed_mask(schema: SequenceSchema, kind: str) -> np.ndarray:
  """``bool [vocab_size]``: the ids sampling may emit; ``kind`` 'image' (the image codes) or
  'text' (text ids, BOS and EOS)."""
  allowed = np.zeros(schema.vocab_size, bool)
  if kind == 'image':
    allowed[schema.image_offset:schema.image_offset + schema.codebook_size] = True
  elif kind == 'text':
    allowed[:schema.text_vocab_size] = True
    allowed[[schema.bos_id, schema.eos_id]] = True
  else:
    raise ValueError(f"allowed_mask: kind must be 'image' or 'text', got {kind!r}")
  return allowed


def masked_logits_fn(allowed: np.ndarray) -> LogitsFn:
  """A ``generate`` ``logits_fn``: ``-inf`` wherever ``allowed`` (``bool [V]``) is False."""
  allowed = jnp.asarray(allowed, bool)

  def logits_fn(step, logits):  # logits: [B, V]
    del step
    return jnp.where(allowed, logits, -jnp.inf)

  return logits_fn


def modality_fn(schema: SequenceSchema) -> Callable[[jax.Array], jax.Array]:
  """A ``generate`` ``modality_fn``: IMAGE (1) for image codes, TEXT (0) for every other id (as
  :func:`jaxrec.data.mixed_modal.modality_of`)."""
  offset = schema.image_offset
  return lambda token: jnp.where(token >= offset, IMAGE, TEXT).astype(jnp.int32)


@functools.lru_cache(maxsize=32)
def _sampler(lm: MixedModalLM, schema: SequenceSchema, kind: str, num_steps: int,
             temperature: float) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """The jitted ``generate`` of ``kind`` ('image' / 'text'), ``(params, prompt, prompt_modality,
  rng) -> (tokens, modality)``, kept per setting so repeated calls reuse its compilation."""
  logits_fn, to_modality = masked_logits_fn(allowed_mask(schema, kind)), modality_fn(schema)

  def sample(params, prompt, prompt_modality, rng):
    return generate(lm, params, prompt, prompt_modality, num_steps, rng, temperature,
                    logits_fn=logits_fn, modality_fn=to_modality)

  return jax.jit(sample)


def _class_indices(schema: SequenceSchema, classes: Optional[Sequence[int]]) -> np.ndarray:
  n = len(schema.class_names)
  if not n:
    raise ValueError('mixed_modal_sampling: the schema names no image classes (captions need '
                     'them)')
  idx = np.arange(n) if classes is None else np.asarray(list(classes), np.int64)
  if idx.ndim != 1 or not len(idx) or ((idx < 0) | (idx >= n)).any():
    raise ValueError(f'mixed_modal_sampling: classes {list(np.ravel(idx))} must be a non-empty '
                     f'list of indices in [0, {n}) ({list(schema.class_names)})')
  return idx


def caption_prompts(codec: MixedModalCodec, classes: Optional[Sequence[int]] = None
                    ) -> np.ndarray:
  """``int32 [C, P]``: per class (all by default) ``BOS caption BOI``, left-filled with BOS to the
  longest (see the module docstring). The caption is the data pipeline's
  (:meth:`MixedModalCodec.captions`, the text of :func:`caption_text`)."""
  s = codec.schema
  idx = _class_indices(s, classes)
  captions = codec.captions()
  rows = [np.concatenate([[s.bos_id], captions[i], [s.boi_id]]).astype(np.int32) for i in idx]
  width = max(len(r) for r in rows)
  return np.stack([np.concatenate([np.full(width - len(r), s.bos_id, np.int32), r])
                   for r in rows])


def sample_images(model: Any, params: PyTree, codec: MixedModalCodec, rng: jax.Array, *,
                  samples_per_class: int = 8, classes: Optional[Sequence[int]] = None,
                  temperature: float = 1.0) -> ImageSamples:
  """Samples ``samples_per_class`` images of each class (all by default) in one ``generate``.

  Args:
    model, params: a ``DecoderLM`` and the run's parameters, or a ``MixedModalLM`` and its own.
    codec: the run's vocabulary (``MixedModalCodec.from_state(dataset_state)``).
    rng: PRNG key; the samples are a function of it.
    samples_per_class: ``S``.
    classes: indices into ``codec.schema.class_names``.
    temperature: as ``generate`` (``<= 0``: greedy, every sample of a class alike).

  Returns:
    :class:`ImageSamples`.
  """
  s = codec.schema
  lm, lm_params = _lm_and_params(model, params)
  _check_vocab(lm, s)
  if samples_per_class < 1:
    raise ValueError(f'sample_images: samples_per_class must be >= 1, got {samples_per_class}')
  idx = _class_indices(s, classes)
  prompts = caption_prompts(codec, idx)  # [C, P]
  batch = np.repeat(prompts, samples_per_class, axis=0)  # [C * S, P], class-major
  sample = _sampler(lm, s, 'image', s.tokens_per_image, float(temperature))
  tokens, _ = sample(lm_params, batch, np.full(batch.shape, TEXT, np.int32), rng)
  tokens = np.asarray(tokens).reshape(len(idx), samples_per_class, s.tokens_per_image)
  codes = tokens - s.image_offset
  images = codec.codebook.decode(codes.reshape(-1, s.tokens_per_image))
  return ImageSamples(class_names=tuple(s.class_names[i] for i in idx), classes=idx,
                      prompts=prompts, tokens=tokens, codes=codes,
                      images=images.reshape(codes.shape[:2] + images.shape[1:]))


def text_until_end(codec: MixedModalCodec, ids: Sequence[int]) -> str:
  """The text of sampled ``ids`` up to the first EOS or BOS (decoded by the BPE)."""
  s = codec.schema
  ids = np.asarray(ids)
  ends = np.flatnonzero((ids == s.eos_id) | (ids == s.bos_id))
  ids = ids[:ends[0]] if len(ends) else ids
  bad = ids[ids >= s.text_vocab_size]
  if bad.size:
    raise ValueError(f'text_until_end: id {int(bad[0])} is not a text token (< '
                     f'{s.text_vocab_size}); sample with sample_text')
  return codec.tokenizer.decode([int(i) for i in ids])


def sample_text(model: Any, params: PyTree, codec: MixedModalCodec, prompt: str, rng: jax.Array,
                *, num_tokens: int = 64, num_samples: int = 1, temperature: float = 1.0
                ) -> TextSamples:
  """Samples ``num_samples`` continuations of ``num_tokens`` tokens after ``BOS prompt``.

  Raises:
    ValueError: the prompt and ``num_tokens`` do not fit the model's context (``generate``).
  """
  s = codec.schema
  lm, lm_params = _lm_and_params(model, params)
  _check_vocab(lm, s)
  if num_samples < 1:
    raise ValueError(f'sample_text: num_samples must be >= 1, got {num_samples}')
  ids = codec.tokenizer.encode(prompt).ids if prompt else []
  prompt_ids = np.asarray([s.bos_id, *ids], np.int32)
  batch = np.repeat(prompt_ids[None], num_samples, axis=0)
  sample = _sampler(lm, s, 'text', int(num_tokens), float(temperature))
  tokens, _ = sample(lm_params, batch, np.full(batch.shape, TEXT, np.int32), rng)
  tokens = np.asarray(tokens)
  return TextSamples(prompt=prompt_ids, tokens=tokens,
                     texts=tuple(text_until_end(codec, row) for row in tokens))


GRID_DPI = 80
_LABEL_IN, _TITLE_IN = 1.6, 0.4  # inches left of the first column (class names), above the grid


def grid_figsize(rows: int, cols: int) -> tuple[float, float]:
  """The grid's figure size in inches (width, height): one inch per image, room for the labels;
  the PNG is ``GRID_DPI`` pixels per inch."""
  return cols + _LABEL_IN, rows + _TITLE_IN


def save_image_grid(samples: ImageSamples, path: str, *, title: str = '') -> None:
  """Writes a PNG of ``grid_figsize(classes, samples)``: one row per class (labelled by its
  name), one column per sample."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows, cols = samples.images.shape[:2]
  fig, axes = plt.subplots(rows, cols, figsize=grid_figsize(rows, cols), squeeze=False)
  for r in range(rows):
    for c in range(cols):
      ax = axes[r, c]
      ax.imshow(samples.images[r, c], cmap='gray', vmin=0, vmax=255)
      ax.set_xticks([])
      ax.set_yticks([])
    axes[r, 0].set_ylabel(samples.class_names[r], rotation=0, ha='right', va='center',
                          fontsize=9)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=GRID_DPI)
  plt.close(fig)
