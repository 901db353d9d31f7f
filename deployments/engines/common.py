"""What both engines need: precision names, device choice, and the errors for missing files and GPU memory."""

import gc
import logging

import torch

from deployments.api import OutOfGpuMemoryError

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ModelFilesMissingError(FileNotFoundError):
    """The model's files are not where the config says, and the engine may not download them."""


def resolve_device(device: str) -> torch.device:
    """'auto' is CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
