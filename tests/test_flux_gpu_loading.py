"""NF4, the 12 GB mode and fp8 on a GPU, loaded through the real `from_pretrained` path.

The checkpoint is the full-size FLUX.1-schnell architecture with seeded random weights, saved as a
diffusers folder (safetensors) first. Run: `pytest -m gpu -s tests/`.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import PROMPT, REPO, SIDE, assert_same_weights, free_cuda, generate, report
from deployments.config import FluxConfig
from deployments.engines.flux import FluxEngine
from deployments.engines.preload import EarlyWeights, start_reading
from deployments.engines.random_models import full_size_flux_pipeline
from deployments.vram import GIB

pytestmark = pytest.mark.gpu

TWELVE_GB_MODE_PEAK_LIMIT = 6.5e9  # bytes, allocated by Flux during a 512x512 generation


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory) -> Path:
    root = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path_factory.getbasetemp()
    path = root / "vortex-flux-full-random"
    start = time.perf_counter()
    pipe = full_size_flux_pipeline(seed=0)
    pipe.save_pretrained(path, safe_serialization=True)
    del pipe
    free_cuda()
    report("build + save full-size random checkpoint", f"{time.perf_counter() - start:.0f} s")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def nf4_from(checkpoint: Path, **options) -> FluxConfig:
    """An NF4 engine loaded from the saved checkpoint through `from_pretrained`, on the GPU."""
    return FluxConfig(model=str(checkpoint), offline=True, precision="nf4", device="cuda", **options)


def load(config: FluxConfig, early_weights: EarlyWeights | None = None) -> FluxEngine:
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    engine = FluxEngine.load(config, early_weights=early_weights)
    report(
        f"load {config.precision}{' +T5 nf4' if config.t5_nf4 else ''}{' +offload' if config.cpu_offload else ''}",
        f"{time.perf_counter() - start:.0f} s, {torch.cuda.memory_allocated() / GIB:.2f} GiB allocated",
    )
    return engine


def test_nf4_loads_through_from_pretrained(saved_checkpoint):
    import bitsandbytes as bnb

    engine = load(nf4_from(saved_checkpoint))
    try:
        # Counts, not lists of the modules: a list would keep the weights alive past `free_cuda` below.
        linears = sum(isinstance(m, torch.nn.Linear) for m in engine.pipe.transformer.modules())
        quantized = sum(isinstance(m, bnb.nn.Linear4bit) for m in engine.pipe.transformer.modules())
        assert quantized > 0.9 * linears
        image = generate(engine, seed=5)
        assert image.std() > 0.01
        assert torch.equal(image, generate(engine, seed=5))
        report("NF4 transformer footprint", f"{engine.pipe.transformer.get_memory_footprint() / GIB:.2f} GiB")
    finally:
        del engine
        free_cuda()


@pytest.mark.parametrize("double_quant", [False, True], ids=["nf4", "nf4-double-quant"])
def test_12gb_mode_peak_vram(saved_checkpoint, double_quant):
    engine = load(nf4_from(saved_checkpoint, t5_nf4=True, nf4_double_quant=double_quant, cpu_offload=True))
    try:
        torch.cuda.reset_peak_memory_stats()
        generate(engine, seed=0)
        torch.cuda.synchronize()  # a generation returns before the GPU has run what it queued: time it all
        start = time.perf_counter()
        engine.generate(PROMPT, seeds=[1], width=SIDE, height=SIDE)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated()
        mode = "12 GB mode" + (" + double quant" if double_quant else "")
        report(f"{mode}: peak allocated over two {SIDE}x{SIDE} generations", f"{peak / GIB:.2f} GiB")
        report(f"{mode}: seconds per image", f"{seconds:.2f}")
        if double_quant:
            assert peak <= TWELVE_GB_MODE_PEAK_LIMIT
    finally:
        del engine
        free_cuda()


def test_12gb_resident_mode_keeps_text_encoders_in_host_memory_and_caches_prompts(saved_checkpoint):
    """configs/gpu-12gb.yaml's arrangement: NF4 transformer resident and graphed, text encoders streamed per layer."""
    config = nf4_from(
        saved_checkpoint,
        nf4_double_quant=True,
        text_encoder_offload=True,
        prompt_cache_size=4,
        compile="regional",
        cuda_graphs=2,
    )
    engine = load(config)
    try:
        encoders = (engine.pipe.text_encoder, engine.pipe.text_encoder_2)
        assert {p.device.type for encoder in encoders for p in encoder.parameters()} == {"cpu"}  # between encodes
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()  # a generation returns before the GPU has run what it queued: time it all
        start = time.perf_counter()
        image = engine.generate("a new prompt for T5", seeds=[1], width=SIDE, height=SIDE)
        torch.cuda.synchronize()
        new_prompt_s = time.perf_counter() - start
        start = time.perf_counter()
        again = engine.generate("a new prompt for T5", seeds=[1], width=SIDE, height=SIDE)
        torch.cuda.synchronize()
        cached_prompt_s = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated()
        report(
            "12 GB resident mode: seconds per image, new / cached prompt", f"{new_prompt_s:.2f} / {cached_prompt_s:.2f}"
        )
        report(
            "12 GB resident mode: peak allocated",
            f"{peak / GIB:.2f} GiB, reserved {torch.cuda.max_memory_reserved() / GIB:.2f} GiB",
        )
        assert torch.equal(image, again) and image.std() > 0.01
        assert peak <= 6.2 * GIB  # 5.99 GiB here on an H200 (2026-12-02); 6.07 in benchmarks/flux_speed.py on an H100
    finally:
        del engine
        free_cuda()


def test_fp8_weights_read_ahead_match_the_copied_load(saved_checkpoint):
    """The fp8 profile's replica reads its transformer blocks (quantizing them) and T5 before diffusers imports
    (`preload.py`): the full-size engine it builds has the same weights and draws the same image as the load that
    copies its own, and peaks no higher while loading."""
    config = FluxConfig(model=str(saved_checkpoint), offline=True, precision="fp8", fuse_qkv=True, device="cuda")
    engines, peaks = [], []  # the peak is the load's own: the first engine is still on the card during the second
    try:
        for early_weights in (start_reading(config), None):
            before = torch.cuda.memory_allocated()
            engines.append(load(config, early_weights))
            peaks.append(torch.cuda.max_memory_allocated() - before)
            how = "read ahead" if early_weights else "copied"
            report(f"fp8 load, weights {how}: peak allocated by the load", f"{peaks[-1] / GIB:.2f} GiB")
        assert_same_weights(*engines)
        assert torch.equal(generate(engines[0], seed=5), generate(engines[1], seed=5))
        assert peaks[0] <= peaks[1] + 0.5 * GIB
    finally:
        del engines
        free_cuda()


def test_a_replica_process_keeps_the_cuda_drivers_jit_cache_in_compile_cache_dir(tmp_path):
    """A process that calls `use_compile_cache_dir` before its first CUDA call, as FluxGenerator does, gets the driver's
    cache of kernels compiled from PTX in compile_cache_dir/cuda-jit (the driver creates it at its start), so that the
    cache travels with the folder instead of staying in the host's ~/.nv."""
    code = (
        "from deployments.config import FluxConfig; from deployments.engines.preload import use_compile_cache_dir; "
        f"use_compile_cache_dir(FluxConfig(random_weights='tiny', compile_cache_dir={str(tmp_path)!r})); "
        "import torch; torch.ones(1, device='cuda').sum().item()"
    )
    environment = {name: value for name, value in os.environ.items() if name != "CUDA_CACHE_PATH"}
    subprocess.run([sys.executable, "-c", code], check=True, env=environment, cwd=REPO)
    assert (tmp_path / "cuda-jit").is_dir()
