"""What both engines need: precision names, device choice, the errors for missing files and GPU memory, and the
GIL's hand-off while threads load beside the main one."""

import gc
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from deployments.api import OutOfGpuMemoryError

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Python's default is 5 ms (`gil_handoff`)
SWITCH_INTERVAL_S = 0.0002


class ModelFilesMissingError(FileNotFoundError):
    """The model's files are not where the config says, and the engine may not download them."""


def resolve_device(device: str) -> torch.device:
    """'auto' is CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def gil_handoff() -> Iterator[None]:
    """Within: Python's switch interval at 0.2 ms. For a start where a thread runs Python (imports, loading saved
    regions) beside one that runs torch ops (copies, quantization, the warm-up): each op releases the GIL, and at the
    default 5 ms the op's thread waits up to that long to take it back. On the 2-core CPU machine, 20,000 small ops
    beside a busy Python thread took 19 s at 5 ms, 1.6 s at 0.2 ms, 0.09 s alone. Nested spans restore in order."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def check_device(device: torch.device) -> None:
    """Raise if `device` can no longer run work. After a sticky CUDA error (an illegal memory access, say)
    every CUDA call of the process fails, this one included; it neither launches nor waits for work."""
    if device.type == "cuda":
        torch.cuda.mem_get_info(device)


def out_of_memory(stage: str, device: torch.device, advice: str) -> OutOfGpuMemoryError:
    """Free what a failed step left behind, log the GPU's state with `advice` for operators, and describe it.

    Call it after leaving the `except torch.cuda.OutOfMemoryError` block: the handler's traceback pins
    the tensors that need freeing.
    """
    gc.collect()
    allocated = total = 0
    if device.type == "cuda":  # on a CPU engine, CUDA OOM only comes from an offloaded or injected fault
        torch.cuda.empty_cache()
        _, total = torch.cuda.mem_get_info(device)
        allocated = torch.cuda.memory_allocated(device)
    error = OutOfGpuMemoryError(stage, allocated, total)
    logger.warning("%s. %s", error, advice)
    return error
