"""The TFDS builders of jaxrec's real datasets: Frappe, MovieLens, Criteo, Avazu, libffm.

Each parses with its jaxrec reader (``jaxrec.data.<dataset>.load``) from ``manual_dir``; its
configs name the files and the row layout they give (checked at build). Registered TFDS names:
``jaxrec_frappe``, ``jaxrec_movielens``, ``jaxrec_criteo``, ``jaxrec_avazu``, ``jaxrec_libffm``.
For other files or reader options make a config with ``Builder.config_from_files(...)``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from jaxrec.data import avazu, criteo, frappe, libffm, movielens
from jaxrec.data.tfds.builder import CTRBuilder, CTRConfig
from jaxrec.data.tfds.rows import RowLayout


def manual_instructions(dataset: str, configs: Sequence[CTRConfig], urls: Mapping[str, str]) -> str:
  """The ``MANUAL_DOWNLOAD_INSTRUCTIONS`` text: files each config expects, and where to get them."""
  lines = [f'Put the {dataset} files in `manual_dir` (nothing is downloaded). Files expected, '
           'by config:']
  lines += [f'  {c.name}: {", ".join(c.files)}' for c in configs]
  lines += ['Public sources:'] + [f'  {k}: {v}' for k, v in urls.items()]
  return '\n'.join(lines)


def _config(name: str, description: str, row_layout: RowLayout, files: Sequence[str],
            **options) -> CTRConfig:
  return CTRConfig(name=name, description=description, layout=row_layout, files=tuple(files),
                   options=tuple(sorted(options.items())))


_FRAPPE = RowLayout(num_sparse=len(frappe.FIELD_NAMES))
_CRITEO = RowLayout(num_sparse=len(criteo.CATEGORICAL), num_dense=len(criteo.DENSE))
_AVAZU_RAW = RowLayout(num_sparse=23)  # weekday, hour_of_day and 21 categorical columns
_SPLIT_NOTE = 'one file, split 8:1:1 at random (seed 0) by the reader'


class FrappeBuilder(CTRBuilder):
  """Frappe_x1 (BARS split), 10 one-hot fields: train / valid (/ test if its file is there)."""
  name = 'jaxrec_frappe'
  READER = frappe
  DOWNLOAD_URLS = frappe.DOWNLOAD_URLS
  DESCRIPTION = (frappe.__doc__ or '').split('\n\n')[0]
  HOMEPAGE = 'https://www.baltrunas.info/context-aware/frappe'
  CITATION = """@article{baltrunas2015frappe,
  title={Frappe: Understanding the Usage and Perception of Mobile App Recommendations In-The-Wild},
  author={Baltrunas, Linas and Church, Karen and Karatzoglou, Alexandros and Oliver, Nuria},
  journal={arXiv preprint arXiv:1505.03014},
  year={2015}
}"""
  BUILDER_CONFIGS = [
      _config('libfm', 'NFM libfm files', _FRAPPE,
              [frappe.LIBFM_FILES['train'], frappe.LIBFM_FILES['valid']], layout='libfm'),
      _config('csv', 'BARS Frappe_x1 csv files', _FRAPPE,
              [frappe.CSV_FILES['train'], frappe.CSV_FILES['valid']], layout='csv'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual_instructions(
      'Frappe_x1', BUILDER_CONFIGS, frappe.DOWNLOAD_URLS) + (
          f'\n(An optional test file, {frappe.LIBFM_FILES["test"]} or {frappe.CSV_FILES["test"]}, '
          'adds a test split.)')


class MovieLensBuilder(CTRBuilder):
  """MovieLens (RecBole atomic files) as CTR: rating >= 4, 7 one-hot fields + multi-hot genres."""
  name = 'jaxrec_movielens'
  READER = movielens
  DOWNLOAD_URLS = movielens.DOWNLOAD_URLS
  DESCRIPTION = (movielens.__doc__ or '').split('\n\n')[0]
  HOMEPAGE = 'https://grouplens.org/datasets/movielens/100k/'
  CITATION = """@article{harper2015movielens,
  title={The MovieLens Datasets: History and Context},
  author={Harper, F. Maxwell and Konstan, Joseph A.},
  journal={ACM Transactions on Interactive Intelligent Systems},
  volume={5}, number={4}, pages={19:1--19:19},
  year={2015}
}"""
  BUILDER_CONFIGS = [
      _config('ml_100k', 'MovieLens-100K, per-user time split (last 1 test, 1 valid)',
              RowLayout(num_sparse=len(movielens.ONE_HOT_FIELDS), num_multi_hot=1,
                        max_multi_hot_length=6),
              ['ml-100k.inter', 'ml-100k.item', 'ml-100k.user'], dataset='ml-100k'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual_instructions('MovieLens', BUILDER_CONFIGS,
                                                     movielens.DOWNLOAD_URLS)


class CriteoBuilder(CTRBuilder):
  """Criteo display ads: 13 dense (log-transformed) and 26 categorical features."""
  name = 'jaxrec_criteo'
  READER = criteo
  DOWNLOAD_URLS = criteo.DOWNLOAD_URLS
  DESCRIPTION = (criteo.__doc__ or '').split('\n\n')[0]
  HOMEPAGE = 'https://www.kaggle.com/c/criteo-display-ad-challenge'
  CITATION = """@misc{criteo2014kaggle,
  title={Display Advertising Challenge},
  author={{Criteo Labs}},
  howpublished={\\url{https://www.kaggle.com/c/criteo-display-ad-challenge}},
  year={2014}
}"""
  BUILDER_CONFIGS = [
      _config('kaggle', f'Kaggle train.txt, {_SPLIT_NOTE}; rare values kept (min_count 1)',
              _CRITEO, ['train.txt'], train_file='train.txt'),
      _config('deepctr_sample', f'DeepCTR 200-row sample, {_SPLIT_NOTE}', _CRITEO,
              ['deepctr_criteo_sample.txt'], train_file='deepctr_criteo_sample.txt'),
      _config('torchrechub_sample', f'torch-rechub 115-row sample, {_SPLIT_NOTE}', _CRITEO,
              ['torchrechub_criteo_sample.csv'], train_file='torchrechub_criteo_sample.csv'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual_instructions('Criteo', BUILDER_CONFIGS,
                                                     criteo.DOWNLOAD_URLS)


class AvazuBuilder(CTRBuilder):
  """Avazu mobile ads: weekday and hour of day from ``hour``, and the other columns categorical."""
  name = 'jaxrec_avazu'
  READER = avazu
  DOWNLOAD_URLS = avazu.DOWNLOAD_URLS
  DESCRIPTION = (avazu.__doc__ or '').split('\n\n')[0]
  HOMEPAGE = 'https://www.kaggle.com/c/avazu-ctr-prediction'
  CITATION = """@misc{avazu2014kaggle,
  title={Click-Through Rate Prediction},
  author={{Avazu}},
  howpublished={\\url{https://www.kaggle.com/c/avazu-ctr-prediction}},
  year={2014}
}"""
  _TORCHREC_HUB = ('torchrechub_avazu_train_sample.csv', 'torchrechub_avazu_valid_sample.csv',
                   'torchrechub_avazu_test_sample.csv')
  BUILDER_CONFIGS = [
      _config('kaggle', f'Kaggle train.csv, {_SPLIT_NOTE}', _AVAZU_RAW, ['train.csv'],
              train_file='train.csv'),
      _config('deepctr_sample', f'DeepCTR 100-row sample, {_SPLIT_NOTE}', _AVAZU_RAW,
              ['deepctr_avazu_sample.txt'], train_file='deepctr_avazu_sample.txt'),
      _config('ringares_sample', f'999-row sample, {_SPLIT_NOTE}', _AVAZU_RAW,
              ['ringares_avazu_sample.txt'], train_file='ringares_avazu_sample.txt'),
      _config('torchrechub_sample', 'torch-rechub index-encoded 70/10/20-row split files',
              RowLayout(num_sparse=22), _TORCHREC_HUB, train_file=_TORCHREC_HUB[0],
              valid_file=_TORCHREC_HUB[1], test_file=_TORCHREC_HUB[2]),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual_instructions('Avazu', BUILDER_CONFIGS, avazu.DOWNLOAD_URLS)


class LibFFMBuilder(CTRBuilder):
  """libffm files: each field a sum-pooled, value-weighted multi-hot bag."""
  name = 'jaxrec_libffm'
  READER = libffm
  DOWNLOAD_URLS = libffm.DOWNLOAD_URLS
  DESCRIPTION = (libffm.__doc__ or '').split('\n\n')[0]
  HOMEPAGE = 'https://www.csie.ntu.edu.tw/~cjlin/libffm/'
  CITATION = """@inproceedings{juan2016ffm,
  title={Field-aware Factorization Machines for CTR Prediction},
  author={Juan, Yuchin and Zhuang, Yong and Chin, Wei-Sheng and Lin, Chih-Jen},
  booktitle={Proceedings of the 10th ACM Conference on Recommender Systems},
  pages={43--50},
  year={2016}
}"""
  BUILDER_CONFIGS = [
      _config('xlearn_criteo_sample', 'xLearn Criteo demo: 200-row train and test files',
              RowLayout(num_multi_hot=18, max_multi_hot_length=11, num_sparse=0),
              ['xlearn_small_train.libffm', 'xlearn_small_test.libffm'],
              train_file='xlearn_small_train.libffm', test_file='xlearn_small_test.libffm'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual_instructions(
      'libffm', BUILDER_CONFIGS, libffm.DOWNLOAD_URLS) + (
          '\nFor other libffm files (their field count and bag lengths vary) make a config with '
          'LibFFMBuilder.config_from_files(...).')


BUILDERS = (FrappeBuilder, MovieLensBuilder, CriteoBuilder, AvazuBuilder, LibFFMBuilder)
