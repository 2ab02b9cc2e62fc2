"""The PyTorch side is installed where the suite is meant to run it.

The torch tests skip on a machine without the ``torch`` extra. CI installs it (README, quickstart
command 2), so there a missing or broken torch side must fail instead of skipping silently.
"""

import importlib
import os

import pytest


@pytest.mark.skipif(os.environ.get('CI', '').lower() not in ('1', 'true'),
                    reason='only CI is required to have the torch extra')
@pytest.mark.parametrize('module', ['torch', 'torchrec', 'fbgemm_gpu', 'torchrec.models.dlrm'])
def test_torch_extra_imports_on_ci(module):
  importlib.import_module(module)
