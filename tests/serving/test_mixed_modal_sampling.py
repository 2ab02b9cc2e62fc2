"""Sampling from a mixed-modal LM: vocabulary constraints, prompt layout, determinism.

A tiny random (untrained) ``DecoderLM`` over a small synthetic vocabulary: 300 text ids, 5
special, 8 image codes; an untrained model puts most of its mass outside the 8 codes, so the
masks are what keeps the samples in range.
"""

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
from flax import linen as nn

from jaxrec.data import text_tokens
from jaxrec.data.image_tokens import Codebook
from jaxrec.data.mixed_modal import MixedModalCodec
from jaxrec.data.schema import SequenceSchema
from jaxrec.models.mixed_modal_lm import DecoderLM, generate
from jaxrec.serving import mixed_modal_sampling as mms

CLASSES = ('T-shirt/top', 'Trouser', 'Ankle boot')
# The data pipeline's caption of each class, written out (jaxrec.data.mixed_modal.caption_text).
CAPTIONS = (' a photo of a t-shirt/top:', ' a photo of a trouser:', ' a photo of an ankle boot:')
TEXTS = ['This app lets you track your photos of shoes and boots.',
         'A free game: trade, build and play with friends.',
         'Browse a catalog of trousers, shirts and ankle boots; order in one tap.'] * 3
SAMPLES = 3


@pytest.fixture(scope='module')
def codec():
  tok = text_tokens.train_tokenizer(TEXTS, 300)
  schema = SequenceSchema(seq_len=96, images_per_sequence=1, text_vocab_size=300,
                          codebook_size=8, class_names=CLASSES)
  centroids = np.linspace(0, 255, 8, dtype=np.float32)[:, None] * np.ones((1, 16), np.float32)
  return MixedModalCodec(schema, tok, Codebook(centroids, 4, 28, 28))


def _random_lm(schema, untie):
  model = DecoderLM(schema, num_layers=1, embed_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                    untie=untie)
  modality = np.repeat(np.arange(2, dtype=np.int32), schema.modality_counts)[None]
  feats = {'inputs': np.zeros_like(modality), 'modality': modality}
  init = jax.jit(lambda key: model.init(key, feats, train=False)['params'])
  return model, nn.meta.unbox(init(jax.random.PRNGKey(0)))


@pytest.fixture(scope='module')
def models(codec):
  """A random dense and MoT model, keyed by ``untie``."""
  return {untie: _random_lm(codec.schema, untie) for untie in ('none', 'mot')}


@pytest.fixture(scope='module')
def mot(models):
  return models['mot']


def _free_samples(lm, params, prompts, steps, key):
  """``generate`` without a vocabulary mask (jitted)."""
  run = jax.jit(lambda p, t, k: generate(lm, p, t, jnp.zeros_like(t), steps, k)[0])
  return np.asarray(run(params, jnp.asarray(prompts), key))


def _image_range(schema):
  return schema.image_offset, schema.image_offset + schema.codebook_size


def test_caption_prompts_are_the_data_pipelines_caption_block(codec):
  s = codec.schema
  prompts = mms.caption_prompts(codec)
  assert prompts.dtype == np.int32 and prompts.shape[0] == len(CLASSES)
  for i, (row, caption) in enumerate(zip(prompts, CAPTIONS)):
    want = [s.bos_id, *codec.tokenizer.encode(caption).ids, s.boi_id]
    assert row[-len(want):].tolist() == want, CLASSES[i]
    assert (row[:-len(want)] == s.bos_id).all()  # left fill
    # The pipeline's image block starts with the same caption and BOI.
    block = codec.image_block(codec.captions()[i], np.zeros(s.tokens_per_image, np.int32))
    assert block[:len(want) - 1].tolist() == want[1:]
  assert max(len(codec.tokenizer.encode(c).ids) for c in CAPTIONS) + 2 == prompts.shape[1]
  # One class: no fill.
  assert mms.caption_prompts(codec, [2]).tolist() == [
      [s.bos_id, *codec.tokenizer.encode(CAPTIONS[2]).ids, s.boi_id]]


@pytest.mark.parametrize('untie', ['none', 'mot'])
def test_sample_images_are_image_codes_one_image_each(codec, models, untie):
  s = codec.schema
  model, params = models[untie]
  out = mms.sample_images(model, params, codec, jax.random.PRNGKey(1), samples_per_class=SAMPLES)
  lo, hi = _image_range(s)
  assert out.class_names == CLASSES and out.classes.tolist() == [0, 1, 2]
  assert out.tokens.shape == (len(CLASSES), SAMPLES, s.tokens_per_image)
  assert ((out.tokens >= lo) & (out.tokens < hi)).all()
  np.testing.assert_array_equal(out.codes, out.tokens - lo)
  assert out.images.shape == (len(CLASSES), SAMPLES, 28, 28) and out.images.dtype == np.uint8
  np.testing.assert_array_equal(out.images.reshape(-1, 28, 28),
                                codec.codebook.decode(out.codes.reshape(-1, s.tokens_per_image)))
  # Unconstrained, the untrained model mostly samples outside the codes: the mask does the work.
  lm, lm_params = model.lm(), params['lm']
  free = _free_samples(lm, lm_params, out.prompts, s.tokens_per_image, jax.random.PRNGKey(1))
  assert ((free < lo) | (free >= hi)).mean() > 0.5


def test_sample_images_are_deterministic_by_rng(codec, mot):
  model, params = mot
  a = mms.sample_images(model, params, codec, jax.random.PRNGKey(3), samples_per_class=SAMPLES)
  b = mms.sample_images(model, params, codec, jax.random.PRNGKey(3), samples_per_class=SAMPLES)
  c = mms.sample_images(model, params, codec, jax.random.PRNGKey(4), samples_per_class=SAMPLES)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert (a.tokens != c.tokens).any()
  # The MixedModalLM and its own parameters sample the same.
  d = mms.sample_images(model.lm(), params['lm'], codec, jax.random.PRNGKey(3),
                        samples_per_class=SAMPLES)
  np.testing.assert_array_equal(a.tokens, d.tokens)


def test_sample_images_of_chosen_classes_and_greedy(codec, mot):
  model, params = mot
  out = mms.sample_images(model, params, codec, jax.random.PRNGKey(0), samples_per_class=2,
                          classes=[2], temperature=0.0)
  assert out.class_names == ('Ankle boot',) and out.tokens.shape[:2] == (1, 2)
  np.testing.assert_array_equal(out.tokens[0, 0], out.tokens[0, 1])  # greedy: one sample


def test_sample_text_emits_only_text_and_end_tokens(codec, mot):
  s = codec.schema
  model, params = mot
  out = mms.sample_text(model, params, codec, 'This app', jax.random.PRNGKey(5), num_tokens=40,
                        num_samples=4)
  assert out.prompt.tolist() == [s.bos_id, *codec.tokenizer.encode('This app').ids]
  assert out.tokens.shape == (4, 40)
  assert (out.tokens < s.image_offset).all()  # never an image code
  assert not np.isin(out.tokens, [s.pad_id, s.boi_id, s.eoi_id]).any()
  assert len(out.texts) == 4 and all(isinstance(t, str) for t in out.texts)
  again = mms.sample_text(model, params, codec, 'This app', jax.random.PRNGKey(5),
                          num_tokens=40, num_samples=4)
  np.testing.assert_array_equal(out.tokens, again.tokens)
  # Unconstrained, the same model does sample image codes.
  free = _free_samples(model.lm(), params['lm'], out.prompt[None].repeat(4, 0), 40,
                       jax.random.PRNGKey(5))
  assert (free >= s.image_offset).any()


def test_text_until_end_stops_at_eos(codec):
  s = codec.schema
  ids = codec.tokenizer.encode(' a photo').ids
  assert mms.text_until_end(codec, [*ids, s.eos_id, *ids]) == ' a photo'
  assert mms.text_until_end(codec, ids) == ' a photo'
  with pytest.raises(ValueError, match='not a text token'):
    mms.text_until_end(codec, [*ids, s.image_offset])


def test_modality_fn_and_masks(codec):
  s = codec.schema
  ids = jnp.asarray([0, s.bos_id, s.boi_id, s.image_offset, s.vocab_size - 1])
  assert mms.modality_fn(s)(ids).tolist() == [0, 0, 0, 1, 1]
  assert np.flatnonzero(mms.allowed_mask(s, 'image')).tolist() == list(range(*_image_range(s)))
  text = mms.allowed_mask(s, 'text')
  assert text[:s.text_vocab_size].all() and text[[s.bos_id, s.eos_id]].all()
  assert text.sum() == s.text_vocab_size + 2
  with pytest.raises(ValueError, match="'image' or 'text'"):
    mms.allowed_mask(s, 'audio')


def test_clear_errors(codec, mot):
  model, params = mot
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match='samples_per_class'):
    mms.sample_images(model, params, codec, key, samples_per_class=0)
  with pytest.raises(ValueError, match=r'indices in \[0, 3\)'):
    mms.sample_images(model, params, codec, key, classes=[3])
  with pytest.raises(ValueError, match="under 'lm'"):
    mms.sample_images(model, params['lm'], codec, key)
  with pytest.raises(TypeError, match='DecoderLM or MixedModalLM'):
    mms.sample_images(object(), params, codec, key)
  with pytest.raises(ValueError, match='exceeds max_len'):
    mms.sample_text(model, params, codec, 'This app', key, num_tokens=200)
  other = DecoderLM(SequenceSchema(seq_len=96, images_per_sequence=1, text_vocab_size=310,
                                   codebook_size=8), num_layers=1, embed_dim=16, num_heads=2,
                    head_dim=8, mlp_dim=32)
  with pytest.raises(ValueError, match='a codec of another run'):
    mms.sample_text(other, params, codec, 'x', key)


def test_grid_png(codec, mot, tmp_path):
  model, params = mot
  out = mms.sample_images(model, params, codec, jax.random.PRNGKey(0), samples_per_class=2)
  path = tmp_path / 'grid.png'
  mms.save_image_grid(out, str(path), title='t')
  width, height = mms.grid_figsize(len(CLASSES), 2)
  assert matplotlib.image.imread(path).shape[:2] == (round(height * mms.GRID_DPI),
                                                     round(width * mms.GRID_DPI))
