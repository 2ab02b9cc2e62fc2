"""Mesh builder: axis sizes with -1, the hierarchical (host, local) form, host-major order."""

import dataclasses

import jax
import ml_collections
import numpy as np
import pytest

from jaxrec.sharding import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  id: int
  process_index: int


def test_resolve_fills_the_rest():
  assert mesh_lib.resolve_axis_sizes({'data': -1, 'fsdp': 4, 'tensor': 1}, 8) == {
      'data': 2, 'fsdp': 4, 'tensor': 1}
  assert mesh_lib.resolve_axis_sizes({'data': 2, 'fsdp': 2, 'tensor': 2}, 8) == {
      'data': 2, 'fsdp': 2, 'tensor': 2}


@pytest.mark.parametrize('sizes,match', [
    ({'data': -1, 'fsdp': -1}, 'only one axis may be -1'),
    ({'data': 3, 'fsdp': -1}, 'does not divide the 8 devices'),
    ({'data': 2, 'fsdp': 2}, 'multiply to 4, but there are 8'),
    ({'data': 0, 'fsdp': -1}, "axis 'data' has size 0"),
    ({'data': 1.5, 'fsdp': -1}, "axis 'data' has size 1.5"),
    ({'host': 2, 'fsdp': -1}, "'host' is reserved"),
])
def test_resolve_rejects_bad_sizes(sizes, match):
  with pytest.raises(ValueError, match=match):
    mesh_lib.resolve_axis_sizes(sizes, 8)


def test_flat_mesh_over_all_devices():
  assert len(jax.devices()) == 8, 'tests/conftest.py sets 8 emulated CPU devices'
  mesh = mesh_lib.make_mesh({'data': -1, 'fsdp': 4, 'tensor': 1})
  assert mesh.axis_names == ('data', 'fsdp', 'tensor')
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 4, 'tensor': 1}
  assert [d.id for d in mesh.devices.flat] == sorted(d.id for d in jax.devices())


def test_hierarchical_mesh_groups_consecutive_devices():
  mesh = mesh_lib.make_hierarchical_mesh({'data': 1, 'fsdp': -1, 'tensor': 1}, num_hosts=2)
  assert mesh.axis_names == ('host', 'data', 'fsdp', 'tensor')
  assert dict(mesh.shape) == {'host': 2, 'data': 1, 'fsdp': 4, 'tensor': 1}
  ids = np.vectorize(lambda d: d.id)(mesh.devices)
  np.testing.assert_array_equal(ids[0].ravel(), [0, 1, 2, 3])
  np.testing.assert_array_equal(ids[1].ravel(), [4, 5, 6, 7])
  # One group per process: a single process is one host.
  assert dict(mesh_lib.make_hierarchical_mesh({'fsdp': -1}, num_hosts=-1).shape) == {
      'host': 1, 'fsdp': 8}
  with pytest.raises(ValueError, match='do not split into 3 equal host groups'):
    mesh_lib.make_hierarchical_mesh({'fsdp': -1}, num_hosts=3)


def test_host_major_order_and_groups_never_span_processes():
  # Two processes whose device ids interleave: host-major order puts each process's together.
  devs = [FakeDevice(i, i % 2) for i in range(8)]
  order = mesh_lib.host_major_devices(devs)
  assert [(d.process_index, d.id) for d in order] == [(0, 0), (0, 2), (0, 4), (0, 6),
                                                        (1, 1), (1, 3), (1, 5), (1, 7)]
  with pytest.raises(ValueError, match='host group 0 of 1 would span processes'):
    mesh_lib.make_hierarchical_mesh({'fsdp': -1}, num_hosts=1, devices=devs)


def test_mesh_from_config_orders_standard_axes_first():
  cfg = ml_collections.ConfigDict({'mesh': {'tensor': 2, 'fsdp': -1, 'data': 1}, 'hosts': 0})
  assert mesh_lib.make_mesh(mesh_lib.axis_sizes_from_config(cfg.mesh)).axis_names == (
      'data', 'fsdp', 'tensor')
  mesh = mesh_lib.mesh_from_config(cfg)
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 4, 'tensor': 2}
  cfg.hosts = 2
  assert dict(mesh_lib.mesh_from_config(cfg).shape) == {'host': 2, 'data': 1, 'fsdp': 2,
                                                        'tensor': 2}
