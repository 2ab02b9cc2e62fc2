"""Writes tests/layers/data/minilm_reference.npz: reference all-MiniLM-L6-v2 outputs for a few
fixed sentences, computed by an independent implementation (PyTorch ``transformers.BertModel`` and
``sentence_transformers``), for tests/layers/test_bert.py. Not needed by the test suite itself.

Usage (needs torch, transformers and sentence-transformers, all CPU; no network)::

  python scripts/make_bert_reference.py [--out tests/layers/data/minilm_reference.npz]

Stored arrays: ``sentences`` (str), ``max_length``, the Hugging Face tokenizer's ``input_ids`` /
``attention_mask`` ``[N, T]`` (padded/truncated to ``max_length``), ``layer_means``
``[L + 1, N, 384]`` (mean pooling of every hidden state, embeddings first) and ``embeddings``
``[N, 384]`` (``SentenceTransformer.encode``: mean pooling + L2 normalisation).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from jaxrec.layers.bert import minilm_dir

SENTENCES = (
    'This is a test sentence.',
    'Toy Story (1995), Animation, Children\'s, Comedy.',
    'The user recently liked GoldenEye and disliked Four Rooms. Will they like Copycat?',
    'Similar users rated it 5, 4, 4, 2.',
    'a',
    'An intentionally long sentence that goes on and on about movies, ratings, users, and '
    'retrieval so that it is cut at the maximum length of the reference batch for sure.',
)
MAX_LENGTH = 24


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), '..', 'tests',
                                                    'layers', 'data', 'minilm_reference.npz'))
  args = parser.parse_args()
  import torch
  import transformers
  from sentence_transformers import SentenceTransformer

  path = str(minilm_dir())
  tok = transformers.AutoTokenizer.from_pretrained(path)
  model = transformers.BertModel.from_pretrained(path).eval()
  batch = tok(list(SENTENCES), padding='max_length', truncation=True, max_length=MAX_LENGTH,
              return_tensors='pt')
  with torch.no_grad():
    out = model(input_ids=batch['input_ids'], attention_mask=batch['attention_mask'],
                output_hidden_states=True)
  mask = batch['attention_mask'].unsqueeze(-1).float()
  means = torch.stack([(h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                       for h in out.hidden_states]).numpy()
  st = SentenceTransformer(path, device='cpu')
  st.max_seq_length = MAX_LENGTH
  emb = st.encode(list(SENTENCES), convert_to_numpy=True)
  np.savez_compressed(args.out, sentences=np.array(SENTENCES), max_length=MAX_LENGTH,
                      input_ids=batch['input_ids'].numpy().astype(np.int32),
                      attention_mask=batch['attention_mask'].numpy().astype(np.int32),
                      layer_means=means.astype(np.float32), embeddings=emb.astype(np.float32),
                      torch_version=torch.__version__,
                      transformers_version=transformers.__version__)
  print(f'wrote {args.out}: {len(SENTENCES)} sentences, layer_means {means.shape}')


if __name__ == '__main__':
  main()
