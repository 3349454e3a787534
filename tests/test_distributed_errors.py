"""Shardings fastoptim cannot reduce over are refused at construction, naming the parameter.

On a one-rank gloo group in this process: the checks read placements and meshes, not data.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist

import fastoptim

pytestmark = pytest.mark.skipif(
    not dist.is_available(), reason="this torch is built without torch.distributed"
)


@pytest.fixture(scope="module")
def mesh():
    from torch.distributed.device_mesh import init_device_mesh

    with tempfile.TemporaryDirectory() as directory:
        init = f"file://{os.path.join(directory, 'init')}"
        dist.init_process_group("gloo", init_method=init, rank=0, world_size=1)
        try:
            yield init_device_mesh("cpu", (1,))
        finally:
            dist.destroy_process_group()


def _dtensor(mesh, placement, shape=(4, 3)) -> torch.nn.Parameter:
    from torch.distributed.tensor import distribute_tensor

    return torch.nn.Parameter(distribute_tensor(torch.randn(shape), mesh, [placement]))


def test_shard_group_must_be_a_process_group(mesh) -> None:
    with pytest.raises(TypeError, match=r"shard_group must be a torch\.distributed\.ProcessGroup"):
        fastoptim.AdamW([torch.nn.Parameter(torch.randn(3))], lr=1e-3, shard_group="world")


def test_shard_group_with_dtensor_parameters(mesh) -> None:
    from torch.distributed.tensor import Shard

    with pytest.raises(ValueError, match=r"parameter 0 .*is a DTensor.*pass shard_group=None"):
        fastoptim.Prodigy([_dtensor(mesh, Shard(0))], shard_group=dist.group.WORLD)


def test_plain_tensors_beside_dtensors(mesh) -> None:
    from torch.distributed.tensor import Shard

    params = [_dtensor(mesh, Shard(0)), torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match="parameter 1 \\(a plain tensor\\) sits beside DTensor"):
        fastoptim.DAdaptAdam(params)
    optimizer = fastoptim.DAdaptAdam(params[:1])
    with pytest.raises(ValueError, match="sits beside DTensor"):  # add_param_group too, unchanged
        optimizer.add_param_group({"params": params[1:]})
    assert len(optimizer.param_groups) == 1


def test_partial_placements(mesh) -> None:
    from torch.distributed.tensor import DTensor, Partial

    param = torch.nn.Parameter(DTensor.from_local(torch.randn(4, 3), mesh, [Partial()]))
    with pytest.raises(ValueError, match=r"parameter 0 .*Partial placement"):
        fastoptim.AdamW([param], lr=1e-3)


def test_projection_needs_whole_output_channels(mesh) -> None:
    from torch.distributed.tensor import Shard

    message = r"weight 0 of shape \(4, 3\) is sharded along dimension\(s\) \[1\]"
    for cls in (fastoptim.AdamP, fastoptim.SGDP):
        with pytest.raises(ValueError, match=message):
            cls([_dtensor(mesh, Shard(1))], lr=0.1)
        cls([_dtensor(mesh, Shard(0))], lr=0.1)  # FSDP2's default is fine


def test_prodigy_slices_need_whole_parameters(mesh) -> None:
    from torch.distributed.tensor import Shard

    with pytest.raises(ValueError, match=r"slice_p=3 .*use slice_p=1 under FSDP2"):
        fastoptim.Prodigy([_dtensor(mesh, Shard(0))], slice_p=3)


def test_fsdp_in_use_means_the_default_group(mesh) -> None:
    params = [torch.nn.Parameter(torch.randn(3))]
    assert fastoptim.DAdaptAdam(params).sharding is None
    sharding = fastoptim.DAdaptAdam(params, fsdp_in_use=True).sharding
    assert sharding is None  # one rank: nothing to reduce over
