"""Tests of jaxrec.data.mixed_modal, text_tokens, image_tokens and the SequenceSchema, on a tiny
meta.csv and tiny IDX files made here; one test reads the real files from ../shared/data (the
conftest's ``shared_data``) when they are there."""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxrec.data import fashion_mnist as fm
from jaxrec.data import mixed_modal as mm
from jaxrec.data import text_tokens
from jaxrec.data.datasets import dataset_options, load_dataset
from jaxrec.data.errors import DataFormatError
from jaxrec.data.image_tokens import Codebook, fit_codebook
from jaxrec.data.schema import SequenceSchema, schema_from_dict

HEADER = ('item\tpackage\tcategory\tdownloads\tdeveloper\ticon\tlanguage\tdescription\tname\t'
          'price\trating\tshort desc')
WORDS = ('the app lets you share photos with friends and family fast simple free game play levels '
         'music news weather map find your way calendar notes sync cloud backup secure chat '
         'video call widget theme battery save clean boost').split()
PER_CLASS = 8  # images of each class in the tiny files
VPC = 2  # validation images per class
OPTIONS = dict(seq_len=160, images_per_sequence=2, text_vocab_size=320, codebook_size=16,
               train_rows=11, valid_rows=6, validation_per_class=VPC, valid_app_fraction=0.2)


def meta_lines(num_apps: int, seed: int) -> list[str]:
  """Tab-separated app lines; each description holds the unique word ``zq<item>x``; items 3 and
  7 have none ('unknown', empty), items 5 and 6 share a description."""
  rng = np.random.default_rng(seed)
  lines = []
  for item in range(num_apps):
    words = rng.choice(WORDS, int(rng.integers(20, 40)))
    text = ' '.join(words[:5].tolist() + [f'zq{item}x'] + words[5:].tolist()).capitalize() + '.'
    text = {3: 'unknown', 7: '', 6: lines[5].split('\t')[7] if item == 6 else text}.get(item,
                                                                                       text)
    lines.append('\t'.join([str(item), f'com.app{item}', 'Tools', '10 - 50', 'dev', 'icon', 'en',
                            text, f'App {item}', 'Free', '4.0', 'short']))
  return lines


def write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  array = np.asarray(array, np.uint8)
  magic = fm.IMAGES_MAGIC if array.ndim == 3 else fm.LABELS_MAGIC
  with gzip.open(path, 'wb') as f:
    f.write(magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
            + array.tobytes())


def prototype_images(n: int, seed: int, size: int = 28, noise: int = 4) -> np.ndarray:
  """``uint8 [n, size, size]``: every 4x4 patch (from the top left) one of 8 flat grey levels plus
  integer noise in ``[-noise, noise]``."""
  rng = np.random.default_rng(seed)
  levels = np.linspace(10, 245, 8)
  patches = levels[rng.integers(0, 8, (n, -(-size // 4), -(-size // 4)))]
  img = np.repeat(np.repeat(patches, 4, 1), 4, 2)[:, :size, :size]
  img = img + rng.integers(-noise, noise + 1, (n, size, size))
  return np.clip(img, 0, 255).astype(np.uint8)


def write_data(root: pathlib.Path, num_apps: int = 40, size: int = 28) -> pathlib.Path:
  """``root/frappe_raw/meta.csv`` and ``root/fashion-mnist/train-*``; returns root."""
  (root / mm.FRAPPE_DIR).mkdir(parents=True)
  (root / mm.FASHION_DIR).mkdir()
  (root / mm.FRAPPE_DIR / mm.META_FILE).write_text(
      '\n'.join([HEADER] + meta_lines(num_apps, 0)) + '\n', encoding='utf-8')
  labels = np.random.default_rng(1).permutation(np.repeat(np.arange(10), PER_CLASS))
  write_idx(root / mm.FASHION_DIR / fm.TRAIN_FILES[0], prototype_images(len(labels), 2, size))
  write_idx(root / mm.FASHION_DIR / fm.TRAIN_FILES[1], labels)
  return root


@pytest.fixture(scope='module')
def root(tmp_path_factory) -> pathlib.Path:
  return write_data(tmp_path_factory.mktemp('mixed'))


@pytest.fixture(scope='module')
def data(root):
  return mm.load(str(root), **OPTIONS)


def real_rows(batch) -> range:
  return range(int(batch['weight'].sum()))


# The schema.


def test_schema_layout_and_round_trip():
  s = SequenceSchema(seq_len=256, images_per_sequence=2, text_vocab_size=2048, codebook_size=256,
                     class_names=fm.CLASS_NAMES)
  ids = [s.pad_id, s.bos_id, s.eos_id, s.boi_id, s.eoi_id]
  assert ids == list(range(s.text_vocab_size, s.image_offset))
  assert list(s.special_ids.values()) == ids
  assert s.vocab_size == s.image_offset + s.codebook_size
  assert s.tokens_per_image == (28 // 4) ** 2
  assert s.modality_counts == (256 - 2 * s.tokens_per_image, 2 * s.tokens_per_image)
  assert s.num_modalities == 2 and s.modality_names == ('text', 'image')
  d = json.loads(json.dumps(s.to_dict()))
  assert schema_from_dict(d) == s
  with pytest.raises(ValueError, match='image_offset is 7'):
    SequenceSchema.from_dict(dict(d, image_offset=7))
  with pytest.raises(ValueError, match='30x28 image does not divide into 4x4'):
    SequenceSchema(256, 2, 2048, 256, image_height=30)
  with pytest.raises(ValueError, match='seq_len 100 cannot hold 2 images'):
    SequenceSchema(100, 2, 2048, 256)


def test_check_modality_names_the_position():
  s = SequenceSchema(256, 2, 512, 16)
  mm.check_modality(np.array([[0, 1], [1, 0]]), s)
  with pytest.raises(ValueError, match=r"batch.modality: position \(1, 0\): unknown modality id "
                                       r"2; known: \{0: 'text', 1: 'image'\}"):
    mm.check_modality(np.array([[0, 1], [2, 0]]), s, 'batch.modality')
  with pytest.raises(ValueError, match=r'position \(3,\): token id -1'):
    mm.check_tokens(np.array([0, 1, 2, -1]), s)


# Text.


def test_read_descriptions_skips_missing_and_names_bad_lines(root, tmp_path):
  apps = text_tokens.read_descriptions(str(root / mm.FRAPPE_DIR / mm.META_FILE))
  assert [i for i, _ in apps] == [i for i in range(40) if i not in (3, 7)]
  assert all(f'zq{i}x' in t for i, t in apps if i != 6)
  lines = [HEADER] + meta_lines(6, 0)
  bad = tmp_path / 'meta.csv'
  bad.write_text('\n'.join(lines[:3] + [lines[3].rsplit('\t', 1)[0]] + lines[4:]))
  with pytest.raises(DataFormatError, match=r'meta.csv:4: 11 tab-separated fields, expected 12'):
    text_tokens.read_descriptions(str(bad))
  bad.write_text('\n'.join(lines[:2] + ['x' + lines[2]] + lines[3:]))
  with pytest.raises(DataFormatError, match=r"meta.csv:3: field 'item': 'x1' is not an integer"):
    text_tokens.read_descriptions(str(bad))
  bad.write_text('\n'.join(lines[:2] + [lines[1]]))
  with pytest.raises(DataFormatError, match=r'meta.csv:3: .*item 0 already on line 2'):
    text_tokens.read_descriptions(str(bad))
  bad.write_text('\n'.join([HEADER.replace('description', 'text')] + lines[1:]))
  with pytest.raises(DataFormatError, match=r"meta.csv:1: missing column 'description'"):
    text_tokens.read_descriptions(str(bad))


def test_split_apps_is_seeded_and_keeps_duplicates_together():
  texts = [f'text {i % 17}' for i in range(20)]  # items 17..19 repeat items 0..2
  split = text_tokens.split_apps(range(20), texts, 0.25, seed=3)
  assert sorted(np.concatenate(list(split.values()))) == list(range(20))
  held = {texts[i] for i in split['valid']}
  assert len(held) == round(0.25 * 17) and not held & {texts[i] for i in split['train']}
  again = text_tokens.split_apps(range(20), texts, 0.25, seed=3)
  np.testing.assert_array_equal(split['valid'], again['valid'])
  other = text_tokens.split_apps(range(20), texts, 0.25, seed=4)
  assert set(other['valid']) != set(split['valid'])


def test_tokenizer_is_deterministic_and_round_trips(root, tmp_path):
  texts = [t for _, t in text_tokens.read_descriptions(str(root / mm.FRAPPE_DIR / mm.META_FILE))]
  a = text_tokens.train_tokenizer(texts, 300)
  b = text_tokens.train_tokenizer(texts, 300)
  ids_a = text_tokens.encode_texts(a, texts)
  assert all(np.array_equal(x, y) for x, y in zip(ids_a, text_tokens.encode_texts(b, texts)))
  assert 256 < a.get_vocab_size() <= 300
  assert sum(map(len, ids_a)) < sum(len(t.encode()) for t in texts)  # merges shorten the bytes
  assert all(a.decode(x.tolist()) == t for x, t in zip(ids_a, texts))
  text_tokens.save_tokenizer(a, str(tmp_path / 'tok.json'))
  c = text_tokens.load_tokenizer(str(tmp_path / 'tok.json'))
  assert all(np.array_equal(x, y) for x, y in zip(ids_a, text_tokens.encode_texts(c, texts)))
  stream = text_tokens.token_stream(a, texts[:2], bos=900, eos=901)
  assert stream[0] == 900 and stream[-1] == 901 and (stream == 900).sum() == 2
  (tmp_path / 'bad.json').write_text('{"nope": 1}')
  with pytest.raises(DataFormatError, match='bad.json: not a tokenizer JSON'):
    text_tokens.load_tokenizer(str(tmp_path / 'bad.json'))


# Images.


def test_codebook_round_trip_error_and_save_load(tmp_path):
  images = prototype_images(60, seed=0)
  cb = fit_codebook(images, 16, seed=0, max_patches=2000, iterations=10)
  codes = cb.encode(images)
  assert codes.dtype == np.int32 and codes.shape == (60, 49)
  assert codes.min() >= 0 and codes.max() < 16
  rec = cb.decode(codes)
  assert rec.dtype == np.uint8 and rec.shape == images.shape
  # Each patch is one of 8 grey levels plus noise uniform in [-4, 4] (mean |noise| 2.2): a codebook
  # that found the 8 levels decodes within the noise; measured 2.1. A missed level would cost tens
  # of grey levels on its patches; predicting the mean pixel costs ~60.
  err = float(np.abs(rec.astype(int) - images).mean())
  assert err < 3.0 < 0.1 * np.abs(images - images.mean()).mean(), err
  again = fit_codebook(images, 16, seed=0, max_patches=2000, iterations=10)
  np.testing.assert_array_equal(again.centroids, cb.centroids)
  cb.save(str(tmp_path / 'cb.npz'))
  loaded = Codebook.load(str(tmp_path / 'cb.npz'))
  assert (loaded.patch, loaded.height, loaded.width) == (4, 28, 28)
  np.testing.assert_array_equal(loaded.encode(images), codes)


def test_codebook_size_mismatches_are_clear(tmp_path):
  with pytest.raises(ValueError, match='fit_codebook: a 30x30 image does not divide into 4x4'):
    fit_codebook(np.zeros((2, 30, 30), np.uint8), 4)
  cb = fit_codebook(prototype_images(4, 0), 4, iterations=2)
  with pytest.raises(ValueError, match=r'expected uint8 \[n, 28, 28\] images .* got uint8 '
                                       r'\[2, 32, 32\]'):
    cb.encode(prototype_images(2, 0, size=32))
  Codebook(cb.centroids, 4, 32, 32).save(str(tmp_path / 'cb32.npz'))
  with pytest.raises(ValueError, match=r'\[n, 32, 32\] .* got uint8 \[2, 28, 28\]'):
    Codebook.load(str(tmp_path / 'cb32.npz')).encode(prototype_images(2, 0))
  np.savez(tmp_path / 'bad.npz', centroids=cb.centroids, patch=4)
  with pytest.raises(DataFormatError, match=r"bad.npz: not a codebook: missing \['height', "
                                            r"'width'\]"):
    Codebook.load(str(tmp_path / 'bad.npz'))
  with pytest.raises(ValueError, match=r'code 4 is outside \[0, 4\)'):
    cb.decode(np.full((1, 49), 4))


# Rows.


def test_pack_row_interleaves_and_pads():
  text = np.arange(10, 16, dtype=np.int32)
  blocks = [np.array([1, 1]), np.array([2, 2, 2])]
  tokens, starts = mm.pack_row(text, blocks, np.array([0, 4]), 14, pad_id=9)
  assert tokens.tolist() == [1, 1, 10, 11, 12, 13, 2, 2, 2, 14, 15, 9, 9, 9]
  assert starts.tolist() == [0, 6]
  with pytest.raises(ValueError, match='11 tokens do not fit in 10'):
    mm.pack_row(text, blocks, np.array([0, 4]), 10, pad_id=9)


def test_batches_shapes_and_static_modality_counts(data):
  s = data.schema
  assert isinstance(s, SequenceSchema) and schema_from_dict(s.to_dict()) == s
  train = data.splits['train']
  batches = list(train.batches(4, shuffle=True, seed=0, epoch=0))
  assert len(batches) == 3  # ceil(11 / 4)
  for b in batches:
    assert set(b) == {'inputs', 'label', 'modality', 'target_modality', 'loss_mask', 'weight'}
    for k in ('inputs', 'label', 'modality', 'target_modality'):
      assert b[k].dtype == np.int32 and b[k].shape == (4, s.seq_len), k
    assert b['loss_mask'].dtype == np.float32 and b['loss_mask'].shape == (4, s.seq_len)
    mm.check_modality(b['modality'], s)
    mm.check_tokens(b['inputs'], s)
    for i in real_rows(b):
      for key in ('modality', 'target_modality'):
        counts = np.bincount(b[key][i], minlength=2)
        assert tuple(counts) == s.modality_counts, key
      np.testing.assert_array_equal(b['inputs'][i, 1:], b['label'][i, :-1])
      np.testing.assert_array_equal(b['modality'][i], b['inputs'][i] >= s.image_offset)
      np.testing.assert_array_equal(b['target_modality'][i], b['label'][i] >= s.image_offset)
      assert b['loss_mask'][i].all()  # the text fills every row: no PAD
  last = batches[-1]
  assert last['weight'].tolist() == [1, 1, 1, 0]
  assert not any(last[k][3].any() for k in last)


def test_rows_hold_captioned_images_of_their_split(data):
  train = data.splits['train']
  s, codec = train.schema, train.codec
  captions = codec.captions()
  starts = []
  for r in range(train.num_rows):
    row = train.row(r, shuffle=True, seed=1, epoch=2)
    tokens = row['tokens']
    np.testing.assert_array_equal(tokens[:-1], row['inputs'])
    for j, start in enumerate(row['block_starts']):
      cap = captions[row['image_labels'][j]]
      i = start + len(cap)
      np.testing.assert_array_equal(tokens[start:i], cap)  # the caption precedes its image
      assert tokens[i] == s.boi_id and tokens[i + 1 + s.tokens_per_image] == s.eoi_id
      np.testing.assert_array_equal(tokens[i + 1:i + 1 + s.tokens_per_image] - s.image_offset,
                                    train.image_codes[row['image_index'][j]])
    starts += row['block_starts'].tolist()
    segments = train.decode_tokens(tokens)
    images = [x for kind, x in segments if kind == 'image']
    assert len(images) == s.images_per_sequence
    np.testing.assert_array_equal(np.stack(images),
                                  codec.codebook.decode(train.image_codes[row['image_index']]))
    text = ''.join(x for kind, x in segments if kind == 'text')
    first = mm.caption_text(s.class_names[row['image_labels'][0]])
    assert first in text
  assert len(set(starts)) > train.num_rows  # blocks sit at varying positions


def test_train_rows_are_seeded_per_epoch_and_valid_rows_are_fixed(data):
  train, valid = data.splits['train'], data.splits['valid']

  def rows(ds, **kw):
    return np.concatenate([b['inputs'] for b in ds.batches(4, **kw)])

  a = rows(train, shuffle=True, seed=0, epoch=0)
  np.testing.assert_array_equal(a, rows(train, shuffle=True, seed=0, epoch=0))
  assert not np.array_equal(a, rows(train, shuffle=True, seed=0, epoch=1))
  assert not np.array_equal(a, rows(train, shuffle=True, seed=1, epoch=0))
  fixed = rows(train)
  np.testing.assert_array_equal(fixed, rows(train, epoch=5, seed=3))
  v = rows(valid)
  for kw in (dict(epoch=3), dict(shuffle=True, seed=7, epoch=1)):
    np.testing.assert_array_equal(v, rows(valid, **kw))
  # An epoch draws its images without repeats while rows * images_per_sequence allows.
  imgs = np.concatenate([train.row(r, shuffle=True, seed=0, epoch=0)['image_index']
                         for r in range(train.num_rows)])
  assert len(set(imgs.tolist())) == len(imgs)


def test_start_resumes_exactly(data):
  train = data.splits['train']
  full = list(train.batches(3, shuffle=True, seed=2, epoch=1))
  tail = list(train.batches(3, shuffle=True, seed=2, epoch=1, start=2))
  assert len(tail) == len(full) - 2
  for x, y in zip(full[2:], tail):
    assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
  assert not list(train.batches(3, start=len(full)))


def test_no_validation_image_or_app_in_train(data, root):
  train, valid = data.splits['train'], data.splits['valid']
  assert not set(train.image_rows.tolist()) & set(valid.image_rows.tolist())
  assert len(valid.image_rows) == 10 * VPC
  for ds in (train, valid):
    for epoch in (0, 1):
      for r in range(ds.num_rows):
        rows = ds.row(r, shuffle=True, seed=0, epoch=epoch)['image_rows']
        assert set(rows.tolist()) <= set(ds.image_rows.tolist())
  valid_apps = set(data.state['valid_apps'])
  apps = dict(text_tokens.read_descriptions(str(root / mm.FRAPPE_DIR / mm.META_FILE)))
  assert valid_apps and valid_apps < set(apps)
  tok = train.codec.tokenizer
  train_text = tok.decode([t for t in train.text.tolist() if t < train.schema.text_vocab_size])
  valid_text = tok.decode([t for t in valid.text.tolist() if t < valid.schema.text_vocab_size])
  for item in apps:
    marker = f'zq{item}x'
    if item == 6:
      continue  # shares item 5's description (and its side)
    assert (marker in valid_text) == (item in valid_apps), item
    assert (marker in train_text) == (item not in valid_apps), item
  assert (5 in valid_apps) == (6 in valid_apps)


def test_short_text_pads_the_end_and_masks_it(data):
  train = data.splits['train']
  s = train.schema
  text = train.text[:20]
  ds = mm.MixedModalDataset(train.codec, text, train.image_codes, train.image_labels,
                            train.image_rows, num_rows=3, name='short')
  b = next(ds.batches(3))
  for i in range(3):
    pad = b['label'][i] == s.pad_id
    assert pad.sum() > 0 and np.array_equal(b['loss_mask'][i], ~pad)
    assert tuple(np.bincount(b['modality'][i], minlength=2)) == s.modality_counts


def test_state_decodes_and_cache_is_reused(root, data, tmp_path):
  state = json.loads(json.dumps(data.state))
  codec = mm.MixedModalCodec.from_state(state)
  row = data.splits['valid'].row(0)
  assert str(codec.decode_tokens(row['tokens'])) == str(data.splits['valid'].decode_tokens(
      row['tokens']))
  cache = tmp_path / 'cache'
  a = mm.load(str(root), cache_dir=str(cache), **OPTIONS)
  files = sorted(os.listdir(cache))
  assert len(files) == 2 and a.state == data.state
  stamps = [os.stat(cache / f).st_mtime_ns for f in files]
  b = mm.load(str(root), cache_dir=str(cache), **OPTIONS)
  assert b.state == a.state and sorted(os.listdir(cache)) == files
  assert [os.stat(cache / f).st_mtime_ns for f in files] == stamps
  mm.load(str(root), cache_dir=str(cache), **dict(OPTIONS, codebook_size=8, text_vocab_size=300))
  assert len(os.listdir(cache)) == 4  # new parameters: new files, the old ones untouched


def test_data_layer_imports_without_tokenizers():
  """``tokenizers`` is an extra: the datasets import without it, and tokenizing names it."""
  code = ("import sys; sys.modules['tokenizers'] = None\n"
          'import jaxrec.data.datasets\n'
          'from jaxrec.data import text_tokens\n'
          'try:\n'
          "  text_tokens.train_tokenizer(['a b'], 300)\n"
          'except ImportError as e:\n'
          '  print(e)\n')
  root = pathlib.Path(__file__).resolve().parents[2]
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       env=dict(os.environ, PYTHONPATH=str(root)))
  assert "needs the 'tokenizers' package (a jaxrec dependency): pip install" in out.stdout, out.stderr


def test_registered_dataset(root):
  opts = dataset_options('mixed_modal')
  assert opts['seq_len'].default == 256 and opts['cache_dir'].type is str
  d = load_dataset('mixed_modal', str(root), **OPTIONS)
  assert set(d.splits) == {'train', 'valid'} and d.name == 'mixed_modal'
  with pytest.raises(ValueError, match='reading a split file is not supported'):
    mm.read_file('x', d.state)


def test_bad_inputs_are_named(tmp_path, root, data):
  odd = write_data(tmp_path / 'odd', size=30)
  with pytest.raises(DataFormatError, match=r'train-images-idx3-ubyte.gz: images are 30x30, which '
                                            r'does not divide into 4x4 patches'):
    mm.load(str(odd), **OPTIONS)
  meta = odd / mm.FRAPPE_DIR / mm.META_FILE
  lines = meta.read_text().split('\n')
  meta.write_text('\n'.join(lines[:5] + [lines[5] + '\textra'] + lines[6:]))
  with pytest.raises(DataFormatError, match=r'meta.csv:6: 13 tab-separated fields, expected 12'):
    mm.load(str(odd), **OPTIONS)
  with pytest.raises(ValueError, match='too few to keep validation_per_class=8'):
    mm.load(str(root), **dict(OPTIONS, validation_per_class=PER_CLASS))
  # 2 blocks of BOI, 49 codes, EOI fit in 111 tokens, but not with their captions.
  with pytest.raises(ValueError, match='seq_len 110 cannot hold 2 image blocks of up to'):
    mm.load(str(root), **dict(OPTIONS, seq_len=110))
  codec = data.splits['train'].codec
  s = codec.schema
  with pytest.raises(ValueError, match='position 1: image code'):
    codec.decode_tokens([s.bos_id, s.image_offset])
  with pytest.raises(ValueError, match='block at position 0 has 3 codes, expected 49'):
    codec.decode_tokens([s.boi_id] + [s.image_offset] * 3 + [s.eoi_id])
  with pytest.raises(ValueError, match='position 2: EOI outside an image block'):
    codec.decode_tokens([s.bos_id, 5, s.eoi_id])


def test_real_data(shared_data):
  """The real files (conftest's ``shared_data``, ../shared/data), small sizes."""
  missing = [p for p in (shared_data / mm.FRAPPE_DIR / mm.META_FILE,
                         shared_data / mm.FASHION_DIR / fm.TRAIN_FILES[0]) if not p.is_file()]
  if missing:
    pytest.skip(f'real data absent: {missing}')
  d = mm.load(str(shared_data), text_vocab_size=512, codebook_size=16, train_rows=8, valid_rows=8)
  train, valid = d.splits['train'], d.splits['valid']
  assert (len(train.image_rows), len(valid.image_rows)) == (50000, 10000)
  assert 300 <= len(d.state['valid_apps']) <= 400  # ~10% of the 3,532 described apps
  images, labels = fm.read_images_and_labels(fm.find_file(str(shared_data / mm.FASHION_DIR /
                                                              fm.TRAIN_FILES[0])))
  np.testing.assert_array_equal(valid.image_rows, fm.split_rows(labels, 1000, 0)['valid'])
  v = images[valid.image_rows, ..., 0]
  codebook = train.codec.codebook
  err = float(np.abs(codebook.decode(valid.image_codes).astype(int) - v).mean())
  # 16 codes of 4x4 patches: measured 19.4 grey levels on the validation images (256 codes:
  # 11.3), against 81.7 for predicting the mean pixel. 22 (+13%) allows other k-means ties on
  # another machine's float32 BLAS, and still fails a codebook that lost several codes.
  print(f'codebook of 16: validation reconstruction MAE {err:.2f}')
  assert err < 22
  np.testing.assert_array_equal(codebook.encode(v[:100]), valid.image_codes[:100])
  b = next(train.batches(8, shuffle=True))
  assert (b['modality'].sum(1) == 2 * 49).all() and b['loss_mask'].all()
