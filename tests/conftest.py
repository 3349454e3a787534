import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


# torch-adopt 0.1.0, the official ADOPT, calls ``Optimizer._cuda_graph_capture_health_check``,
# which torch 2.11 names ``_accelerator_graph_capture_health_check`` (torch 2.13 has both names):
# the alias lets the oracle run on either torch.
if not hasattr(torch.optim.Optimizer, "_cuda_graph_capture_health_check"):
    torch.optim.Optimizer._cuda_graph_capture_health_check = (
        torch.optim.Optimizer._accelerator_graph_capture_health_check
    )
