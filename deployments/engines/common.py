"""What both engines need: precision names, device choice, and the error for model files that are not there."""

import torch

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ModelFilesMissingError(FileNotFoundError):
    """The model's files are not where the config says, and the engine may not download them."""


def resolve_device(device: str) -> torch.device:
    """'auto' is CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
