"""The fp8 transformer's block weights, read from the checkpoint and quantized on the device by a thread that starts
before diffusers is imported (this module imports torch and safetensors only).

A replica's imports (6-10 s on the H200 test host, mostly diffusers and transformers, holding the GIL) and the copy
of the transformer's 22 GiB of bf16 block weights to the GPU with their quantization (3-5 s, mostly waiting for the
copies, without the GIL) used to follow each other. Started first, the copies run during the imports;
`flux_loading.quantize_fp8` then builds each block from the tensors read here instead of copying it.
"""

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors import safe_open

from deployments.config import FluxConfig
from deployments.engines.common import resolve_device
from deployments.engines.fp8 import quantize_weight, stored_in_fp8
from deployments.engines.model_files import local_model_folder

BLOCKS = ("transformer_blocks.", "single_transformer_blocks.")  # FluxTransformer2DModel's repeated blocks
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' file names for a model's weights
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
# Each copy and quantization releases the GIL, and the imports running meanwhile hold it: at Python's default
# switch interval (5 ms) the reading thread would wait up to that long to take it back after every operation.
SWITCH_INTERVAL_S = 0.0002


class BlockWeights:
    """The block tensors of a FLUX transformer checkpoint, read on a thread from construction on, each linear layer's
    weight that `fp8.float8_linears` would quantize already quantized (`<layer>.weight` in fp8, `<layer>.weight_scale`
    beside it), the rest in `dtype`, all on `device`."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
        self._stopped = threading.Event()
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fp8-block-weights")
        self._tensors = self._thread.submit(self._read, folder / "transformer", device, dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors by name in the transformer, once all are read; raises what the reading raised."""
        try:
            return self._tensors.result()
        finally:
            self.close()

    def close(self) -> None:
        """Stop reading (a failed load leaves nothing behind) and restore the switch interval."""
        self._stopped.set()
        self._thread.shutdown(wait=True)
        sys.setswitchinterval(self._switch_interval)

    def _read(self, folder: Path, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for path in weight_files(folder):
            with safe_open(path, framework="pt", device="cpu") as file:
                for name in file.keys():
                    if self._stopped.is_set():
                        return {}
                    if not name.startswith(BLOCKS):
                        continue
                    tensor = file.get_tensor(name).to(device, dtype)
                    layer, _, kind = name.rpartition(".")
                    if kind == "weight" and tensor.dim() == 2 and stored_in_fp8(layer, tensor.shape):
                        tensors[name], tensors[f"{layer}.weight_scale"] = quantize_weight(tensor)
                    else:
                        tensors[name] = tensor
        return tensors


def weight_files(folder: Path) -> list[Path]:
    """A diffusers model folder's safetensors files: the shards its index names, or its single file."""
    index = folder / WEIGHTS_INDEX_NAME
    if index.is_file():
        return [folder / shard for shard in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [folder / WEIGHTS_NAME]


def start_reading(config: FluxConfig) -> BlockWeights | None:
    """For an fp8 engine whose checkpoint is on local disk: its block weights, being read from now on (pass them to
    `FluxEngine.load`). None for other engines, which load as before."""
    if config.precision != "fp8" or config.random_weights:
        return None
    folder = local_model_folder(config)
    if folder is None:  # online, not yet downloaded: from_pretrained fetches it first
        return None
    return BlockWeights(folder, resolve_device(config.device), torch.bfloat16)
