"""What a replica does before it imports diffusers: point the process's caches of compiled code at
`compile_cache_dir`, and start reading an fp8 engine's largest weights onto the device on a thread (this module
imports torch and safetensors only): the transformer's blocks, each linear layer's weight quantized as it arrives, and
T5 where it will live on the device.

A replica's imports (6-10 s on the H200 test host, mostly diffusers and transformers, holding the GIL) and the copies
of those weights to the GPU (22 GiB of transformer blocks in bf16 and 9 GiB of T5, 4-6 s, mostly waiting for the
copies, without the GIL) used to follow each other. Started first, the copies run during the imports;
`flux_loading` then gives the loaded pipeline these tensors instead of copying its own.
"""

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors import safe_open

from deployments.config import FluxConfig
from deployments.engines.common import resolve_device
from deployments.engines.fp8 import quantize_weight, stored_in_fp8
from deployments.engines.model_files import index_shards, local_model_folder

BLOCKS = ("transformer_blocks.", "single_transformer_blocks.")  # FluxTransformer2DModel's repeated blocks
# Each component's weights files, as diffusers and transformers name them: (single file, index of shards)
WEIGHT_FILES = {
    "transformer": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"),
    "text_encoder_2": ("model.safetensors", "model.safetensors.index.json"),
}
# Each copy and quantization releases the GIL, and the imports running meanwhile hold it: at Python's default
# switch interval (5 ms) the reading thread would wait up to that long to take it back after every operation.
SWITCH_INTERVAL_S = 0.0002


class EarlyWeights:
    """Tensors of a FLUX checkpoint read on a thread from construction on, all on `device`: the transformer's blocks
    (each linear layer's weight that `fp8.float8_linears` quantizes already in fp8 as `<layer>.weight`, with
    `<layer>.weight_scale` beside it; the rest in `dtype`) and, with `text_encoder`, all of T5 in `dtype`."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype, text_encoder: bool) -> None:
        self.components = ("transformer", "text_encoder_2") if text_encoder else ("transformer",)
        self._stopped = threading.Event()
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="early-weights")
        self._read = self._thread.submit(self._read_all, folder, device, dtype)

    def tensors(self, component: str) -> dict[str, torch.Tensor]:
        """One of `components`' tensors by name, once everything is read; raises what the reading raised."""
        return self._read.result().pop(component)

    def close(self) -> None:
        """Stop reading, if it still is (a failed load leaves nothing behind), and restore the switch interval."""
        self._stopped.set()
        self._thread.shutdown(wait=True)
        sys.setswitchinterval(self._switch_interval)

    def _read_all(self, folder: Path, device: torch.device, dtype: torch.dtype) -> dict[str, dict[str, torch.Tensor]]:
        return {component: self._read_component(folder / component, device, dtype) for component in self.components}

    def _read_component(self, folder: Path, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        transformer = folder.name == "transformer"  # its blocks only, linear weights quantized
        tensors: dict[str, torch.Tensor] = {}
        for path in weight_files(folder, *WEIGHT_FILES[folder.name]):
            with safe_open(path, framework="pt", device="cpu") as file:
                for name in file.keys():
                    if self._stopped.is_set():
                        return {}
                    if transformer and not name.startswith(BLOCKS):
                        continue
                    tensor = file.get_tensor(name).to(device, dtype)
                    layer, _, kind = name.rpartition(".")
                    quantized = kind == "weight" and tensor.dim() == 2 and stored_in_fp8(layer, tensor.shape)
                    if transformer and quantized:
                        tensors[name], tensors[f"{layer}.weight_scale"] = quantize_weight(tensor)
                    else:
                        tensors[name] = tensor
        return tensors


def weight_files(folder: Path, single: str, index: str) -> list[Path]:
    """A model folder's safetensors files: the shards its index names, or its single file."""
    if not (folder / index).is_file():
        return [folder / single]
    return [folder / shard for shard in index_shards(folder / index)]


def use_compile_cache_dir(config: FluxConfig) -> None:
    """Keep this process's compiled code in `compile_cache_dir`, so that it travels with the folder: Inductor's
    kernels (TORCHINDUCTOR_CACHE_DIR) and, in its `cuda-jit/` folder, the CUDA driver's cache of the kernels it
    compiles from PTX at their first launch (CUDA_CACHE_PATH, unless the operator set it). The driver reads its
    variable once, at the process's first CUDA call, which bitsandbytes makes when diffusers imports it: call this
    first. Without it the driver's cache is per host (~/.nv): on a fresh H200 host the fp8 profile's CLIP text
    captures took 2.3-2.6 s instead of 0.3-0.5 s, in every start whose driver cache was empty."""
    if config.compile_cache_dir:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = config.compile_cache_dir  # read whenever Inductor compiles
        os.environ.setdefault("CUDA_CACHE_PATH", str(Path(config.compile_cache_dir) / "cuda-jit"))


def start_reading(config: FluxConfig) -> EarlyWeights | None:
    """For an fp8 engine whose checkpoint is on local disk: its largest weights, being read from now on (pass them to
    `FluxEngine.load`). None for other engines, which load as before."""
    if config.precision != "fp8" or config.random_weights:
        return None
    folder = local_model_folder(config)
    if folder is None:  # online, not yet downloaded: from_pretrained fetches it first
        return None
    # T5 stays on the device unless it is offloaded or quantized (then from_pretrained places it).
    text_encoder = not (config.cpu_offload or config.text_encoder_offload or config.t5_nf4)
    return EarlyWeights(folder, resolve_device(config.device), torch.bfloat16, text_encoder)
