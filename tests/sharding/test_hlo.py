"""Collectives counted from compiled HLO text, checked on programs with known collectives."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrec.sharding import hlo


def _grad_hlo(num_params: int) -> str:
  """Data-parallel gradient of ``num_params`` replicated [16, 16] f32 matrices on 8 devices."""
  mesh = jax.make_mesh((8,), ('data',))

  def loss(params, x):
    return sum(jnp.sum((x @ w) ** 2) for w in params)

  params = jax.device_put([jnp.full((16, 16), float(i)) for i in range(num_params)],
                          NamedSharding(mesh, P()))
  x = jax.device_put(jnp.ones((64, 16)), NamedSharding(mesh, P('data')))
  grad = jax.jit(jax.grad(loss), out_shardings=NamedSharding(mesh, P()))
  return grad.lower(params, x).compile().as_text()


@pytest.mark.parametrize('num_params', [1, 8])
def test_gradient_all_reduce_bytes(num_params):
  """XLA combines the gradients into one tuple all-reduce (its type carries /*index=5*/)."""
  ops = [op for op in hlo.collectives(_grad_hlo(num_params)) if op.kind == 'all-reduce']
  assert sum(op.result_bytes for op in ops) == num_params * 16 * 16 * 4
  assert all(op.group_size == 8 for op in ops)
  total = hlo.summarize(ops)['all-reduce']['traffic_bytes']
  assert total == pytest.approx(2 * num_params * 16 * 16 * 4 * 7 / 8)


def test_all_gather_and_group_size_parsing():
  text = ('  %ag = f32[8,4]{1,0} all-gather(%p), channel_id=1, replica_groups=[2,4]<=[8], '
          'dimensions={0}\n'
          '  %rs = bf16[2,4]{1,0} reduce-scatter(%q), replica_groups={{0,1,2,3},{4,5,6,7}}, '
          'dimensions={0}, to_apply=%add\n')
  ag, rs = hlo.collectives(text)
  assert (ag.kind, ag.dtypes, ag.result_bytes, ag.group_size) == ('all-gather', ('f32',), 128, 4)
  assert (rs.kind, rs.dtypes, rs.result_bytes, rs.group_size) == ('reduce-scatter', ('bf16',), 16, 4)
  assert ag.traffic_bytes == pytest.approx(96.0)
  assert rs.traffic_bytes == pytest.approx(48.0)


def test_replica_groups_parsing():
  line = '%a = f32[4]{0} all-to-all(%p), replica_groups={{0,4},{1,5},{2,6},{3,7}}, dimensions={0}'
  assert hlo.replica_groups(line) == ((0, 4), (1, 5), (2, 6), (3, 7))
  assert hlo.replica_groups('replica_groups=[2,4]<=[8], x') == ((0, 1, 2, 3), (4, 5, 6, 7))
  assert hlo.replica_groups('replica_groups=[4,2]<=[2,4]T(1,0), x') == ((0, 4), (1, 5), (2, 6),
                                                                         (3, 7))
  mesh = "replica_groups=mesh['h'=2,'l'=4] {'h'}, use_global_device_ids=true"
  assert hlo.replica_groups(mesh) == ((0, 4), (1, 5), (2, 6), (3, 7))
  assert hlo.replica_groups("replica_groups=mesh['h'=2,'l'=4] {'l'}") == ((0, 1, 2, 3),
                                                                          (4, 5, 6, 7))
  (op,) = hlo.collectives('  %rs = f32[2]{0} reduce-scatter(%q), replica_groups=[2,4]<=[8], '
                          'dimensions={0}, to_apply=%add\n')
  assert op.replica_groups == ((0, 1, 2, 3), (4, 5, 6, 7)) and op.group_size == 4
