"""How a trained OptiRAG-Rec model reaches a server: its run directory, or a compact bundle.

:func:`load_run` reads a run of ``scripts/train_optirag.py`` (``results.json``, ``params.msgpack``,
``margins.npz``). :func:`save_bundle` writes what serving a set of prompts needs into one ``.npz``:
the params with the word-embedding table pruned to the token ids those prompts use
(:func:`prune_vocab`; ids remapped, so every lookup gathers the same rows and predictions are
unchanged), the :class:`~jaxrec.layers.bert.BertConfig` fields (``vocab_size`` = kept ids) and
the remapped prompts. For all-MiniLM-L6-v2 the six layers are about 42 MB in float32 and the full
30,522 x 384 word table another 47 MB; a few thousand kept rows are a few MB, so a bundle fits a
64 MiB transfer. :func:`load_bundle` reads it back.

Bundle keys: ``config`` (JSON of the config), ``param/<path>`` (one per leaf, ``/``-joined),
``input_ids`` / ``attention_mask`` ``int32 [N, T]``, ``vocab`` ``int32 [V']`` (the original id
of each kept row), optional ``label [N]``, ``format`` (1).

Example::

  results, z, config, params = load_run('runs/optirag_gcn_full')
  save_bundle('gcn_full.npz', config, params, z['test_input_ids'][:128],
              z['test_attention_mask'][:128])
  config, params, arrays = load_bundle('gcn_full.npz')   # arrays['input_ids'] remapped
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import numpy as np
from flax import serialization, traverse_util

from jaxrec.layers.bert import BertConfig
from jaxrec.models import optirag

PyTree = Any
FORMAT = 1


def load_run(workdir: str) -> tuple[dict, dict, BertConfig, PyTree]:
  """``(results, margins.npz arrays, config (dropout 0), params)`` of a train_optirag.py run;
  the params on the default device (numpy params would be copied to it at every jitted call).

  The encoder config is ``results['bert_config']`` when present (another encoder than
  all-MiniLM-L6-v2, e.g. a test's), else MiniLM's ``config.json``.
  """
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  margins = dict(np.load(os.path.join(workdir, 'margins.npz')))
  if 'bert_config' in results:
    config = BertConfig(**{**results['bert_config'], 'dropout_rate': 0.0})
  else:
    from jaxrec.layers.bert import minilm_dir  # pylint: disable=g-import-not-at-top
    config = dataclasses.replace(BertConfig.from_hf_json(minilm_dir() / 'config.json'),
                                 dropout_rate=0.0)
  model = optirag.OptiRAGCTR(config, results['config']['head_hidden'])
  with open(os.path.join(workdir, 'params.msgpack'), 'rb') as f:
    params = serialization.msgpack_restore(f.read())
  shapes = jax.tree.map(lambda x: x.shape, optirag.param_shapes(model))
  if jax.tree.map(np.shape, params) != shapes:
    raise ValueError(f'{workdir}/params.msgpack does not match the model of results.json')
  return results, margins, config, jax.device_put(params)


def prune_vocab(config: BertConfig, params: PyTree,
                input_ids: np.ndarray) -> tuple[BertConfig, PyTree, np.ndarray, np.ndarray]:
  """Keeps the word-embedding rows of the ids in ``input_ids`` (padding included).

  Returns:
    ``(config with vocab_size = V', params with word table [V', D], input_ids remapped to
    0..V'-1, vocab int32 [V'] (the original id of each kept row, ascending))``.
  """
  ids = np.asarray(input_ids)
  vocab = np.unique(ids).astype(np.int32)
  if vocab[0] < 0 or vocab[-1] >= config.vocab_size:
    raise ValueError(f'input_ids outside [0, {config.vocab_size}): {vocab[0]}..{vocab[-1]}')
  word = np.asarray(params['encoder']['embeddings']['word'])[vocab]
  embeddings = {**params['encoder']['embeddings'], 'word': word}
  pruned = {**params, 'encoder': {**params['encoder'], 'embeddings': embeddings}}
  remapped = np.searchsorted(vocab, ids).astype(np.int32)
  return dataclasses.replace(config, vocab_size=len(vocab)), pruned, remapped, vocab


def save_bundle(path: str, config: BertConfig, params: PyTree, input_ids: np.ndarray,
                attention_mask: np.ndarray, label: Optional[np.ndarray] = None) -> BertConfig:
  """Writes the serving bundle of ``input_ids`` / ``attention_mask`` ``[N, T]`` (and ``label``)
  to ``path`` (float32 params, word table pruned by :func:`prune_vocab`); returns its config."""
  ids, mask = np.asarray(input_ids), np.asarray(attention_mask)
  if ids.ndim != 2 or ids.shape != mask.shape:
    raise ValueError(f'input_ids {ids.shape} and attention_mask {mask.shape} must both be '
                     '[rows, tokens] of one shape')
  config, params, ids, vocab = prune_vocab(config, params, ids)
  flat = traverse_util.flatten_dict(jax.device_get(params), sep='/')
  arrays = {f'param/{k}': np.asarray(v, np.float32) for k, v in flat.items()}
  arrays.update(config=np.array(json.dumps(dataclasses.asdict(config))), input_ids=ids,
                attention_mask=mask.astype(np.int32), vocab=vocab, format=np.array(FORMAT))
  if label is not None:
    arrays['label'] = np.asarray(label)
  with open(path, 'wb') as f:  # np.savez would append .npz to a path without it
    np.savez(f, **arrays)
  return config


def load_bundle(path: str) -> tuple[BertConfig, PyTree, dict[str, np.ndarray]]:
  """``(config, params, arrays)`` of a bundle; ``arrays``: ``input_ids``, ``attention_mask``,
  ``vocab`` and ``label`` if saved; the params on the default device."""
  with np.load(path) as z:
    if 'format' not in z or int(z['format']) != FORMAT:
      raise ValueError(f'{path}: not a serving bundle of format {FORMAT} '
                       '(written by jaxrec.serving.bundle.save_bundle)')
    config = BertConfig(**json.loads(str(z['config'])))
    params = traverse_util.unflatten_dict(
        {k[len('param/'):]: z[k] for k in z.files if k.startswith('param/')}, sep='/')
    arrays = {k: z[k] for k in ('input_ids', 'attention_mask', 'vocab', 'label') if k in z}
  return config, jax.device_put(params), arrays
