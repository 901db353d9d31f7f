"""Speed setups for a loaded FLUX pipeline: fused QKV projections, regional compilation (traced in each process, or
precompiled and saved), CUDA graphs.

They change how the pipeline runs, not what it computes (`tests/test_flux_gpu_fast.py` checks the
images). fp8 is applied while loading (`flux_loading.quantize_fp8`), since it replaces the weights.
"""

import itertools
from pathlib import Path

import torch
from diffusers import FluxPipeline
from diffusers.models.attention import AttentionModuleMixin

from deployments.config import FluxConfig
from deployments.engines.cuda_graphs import CudaGraphRunner
from deployments.engines.precompiled import RegionStore


def region_store(config: FluxConfig) -> RegionStore | None:
    """With `compile: precompiled`, the store of compiled regions; made before the weights load, so that fp8
    blocks can be installed in it as they arrive on the device (`flux_loading.quantize_fp8`)."""
    return RegionStore(regions_folder(config)) if config.compile == "precompiled" else None


def optimize_pipeline(pipe: FluxPipeline, config: FluxConfig, regions: RegionStore | None = None) -> None:
    """Apply the speed options of `config` to a loaded pipeline, in place, in the order they compose. With
    `compile: precompiled`, `regions` is the engine's `region_store`."""
    if config.fuse_qkv and config.precision != "fp8":  # fp8 fused before quantizing, at load
        fuse_qkv_projections(pipe.transformer)
    if config.compile != "none" or config.cuda_graphs:
        # Images are decoded one at a time (once compiled, as fast as a whole batch on an H100), so a new batch size
        # neither compiles nor captures the decoder again.
        pipe.vae.enable_slicing()
    if config.compile != "none":
        # The decoder is one region, compiled per image size. Tiles come in several shapes per size (the last row
        # and column are narrower): one dynamic-shape compile serves them.
        if config.compile == "precompiled":
            if regions is None:
                raise ValueError("compile: precompiled needs the engine's region store (region_store(config))")
            for block in pipe.transformer.modules():
                if type(block).__name__ in pipe.transformer._repeated_blocks:  # what compile_repeated_blocks compiles
                    regions.install(block)
        else:
            pipe.transformer.compile_repeated_blocks(fullgraph=True)
        if config.compile == "precompiled" and not config.vae_tile_size:  # tiles need a dynamic-shape compile
            regions.install(pipe.vae.decoder)
        else:
            pipe.vae.decoder.compile(fullgraph=True, dynamic=bool(config.vae_tile_size))
    if config.cuda_graphs:
        pipe.transformer.forward = CudaGraphRunner(pipe.transformer.forward, config.cuda_graphs)
        if not config.text_encoder_offload:  # streamed weights cannot be replayed from fixed addresses
            pipe.text_encoder.forward = CudaGraphRunner(pipe.text_encoder.forward, config.cuda_graphs)
            pipe.text_encoder_2.forward = CudaGraphRunner(pipe.text_encoder_2.forward, config.cuda_graphs)
        # `_decode` is what `decode` calls once per image when it slices a batch: one graph per image size serves
        # every batch size, where graphing `decode` took one per size and batch size (at the fp8 profile's start,
        # 15 more captures, each after an eager decode of the whole batch).
        pipe.vae._decode = CudaGraphRunner(pipe.vae._decode, config.cuda_graphs)


def regions_folder(config: FluxConfig) -> Path:
    """Where precompiled regions are kept: `compile_cache_dir`, or Inductor's own cache folder."""
    if not hasattr(torch.compiler, "load_compiled_function"):
        raise ValueError(f"compile: precompiled needs torch's precompile API (torch 2.9+); this is {torch.__version__}")
    from torch._inductor.runtime.cache_dir_utils import cache_dir  # TORCHINDUCTOR_CACHE_DIR, or Inductor's default

    return Path(config.compile_cache_dir or cache_dir()) / "vortex-regions"


# diffusers' AttentionModuleMixin.fuse_projections concatenates these layers' weights and biases, in this order.
FUSED_LAYERS = {"to_qkv": ("to_q", "to_k", "to_v"), "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj")}


def fuse_qkv_projections(module: torch.nn.Module) -> None:
    """One GEMM for Q, K and V (and for the text stream's Q, K, V) in every attention layer of `module`: the
    transformer, or one of its blocks (diffusers' own `fuse_qkv_projections` takes the whole model).

    diffusers keeps the unfused layers beside the fused ones (4 GiB in bf16 for the transformer); they are dropped
    here, so the layers cannot be unfused afterwards.
    """
    for layer in list(module.modules()):  # listed first: fusing adds layers
        if isinstance(layer, AttentionModuleMixin):
            layer.fuse_projections()  # a no-op for attention layers that do not fuse
        if getattr(layer, "fused_projections", False):
            for name in itertools.chain(*FUSED_LAYERS.values()):
                if getattr(layer, name, None) is not None:
                    delattr(layer, name)
