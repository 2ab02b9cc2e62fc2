"""Study helpers: typed config overrides and resumable runs."""

import json

import ml_collections
import pytest

from jaxrec.errors import ConfigError
from jaxrec.train import study


def _config():
  return ml_collections.ConfigDict({'num_epochs': 3, 'lr': 0.1, 'flag': False, 'name': 'a',
                                    'smc': {'views': 'independent', 'channels': 2}})


def test_set_field_converts_to_the_field_type():
  c = _config()
  study.apply_overrides(c, ['num_epochs=5', 'lr=0.03', 'flag=true', 'name=b', 'smc.channels=3',
                            'smc.views=identical'])
  assert (c.num_epochs, c.lr, c.flag, c.name) == (5, 0.03, True, 'b')
  assert (c.smc.channels, c.smc.views) == (3, 'identical')
  assert isinstance(c.lr, float) and isinstance(c.num_epochs, int)


@pytest.mark.parametrize('item,message', [('epochs=1', "no field 'epochs'"),
                                          ('dlb.alpha=1', "no group 'dlb'"),
                                          ('num_epochs', 'expected key=value')])
def test_bad_overrides_name_the_field(item, message):
  with pytest.raises(ConfigError, match=message):
    study.apply_overrides(_config(), [item])


def test_run_or_read_reads_a_finished_run(tmp_path):
  (tmp_path / 'results.json').write_text(json.dumps({'valid': {'auc': 0.5}}))
  assert study.run_or_read(_config(), str(tmp_path)) == {'valid': {'auc': 0.5}}
