"""CUDA graph runners in a warm-up that captures without running: the graphs replay what the calls compute, and a
capture that cannot go without its eager call falls back to one. Run: `pytest -m gpu tests/`."""

import pytest
import torch

from deployments.engines.cuda_graphs import CudaGraphRunner, capturing_without_running

pytestmark = pytest.mark.gpu


def doubled_after_first_sight(synchronize_on_new_shape: bool):
    """x * 2 + 1; on each new shape's first call it first waits for the GPU if asked, as a kernel's autotuning does."""
    seen = set()

    def function(x: torch.Tensor) -> torch.Tensor:
        if synchronize_on_new_shape and x.shape not in seen:
            seen.add(x.shape)
            torch.cuda.synchronize()  # not allowed while a stream captures
        return x * 2 + 1

    return function


@pytest.mark.parametrize("synchronize_on_new_shape", [False, True])
@torch.inference_mode()
def test_graphs_captured_without_running_replay_what_the_calls_compute(synchronize_on_new_shape):
    runner = CudaGraphRunner(doubled_after_first_sight(synchronize_on_new_shape), max_graphs=3)
    shapes = [(4,), (8,), (16,)]
    with capturing_without_running():  # the warm-up: results thrown away
        for shape in shapes:
            runner(torch.zeros(shape, device="cuda"))
    assert len(runner) == 3
    # Without the eager call the captures need nothing of it; with a new shape's synchronization the second shape's
    # capture fails, is run eagerly and captured again, and so is every later one.
    assert runner.capture_unrun is not synchronize_on_new_shape
    for shape in shapes:
        x = torch.randn(shape, device="cuda")
        assert torch.equal(runner(x), x * 2 + 1)
