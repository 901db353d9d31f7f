"""One-off: can the fp8 load from a local diffusers folder (weights in the page cache) go faster with the host->GPU
copies on several threads? Usage: python load_parallel.py MODE FOLDER, MODE one of
  seq            the repo's load (quantize_fp8, then pipe.to)
  pool-N         N threads copy blocks (then T5's layers) ahead on the default stream; the main thread fuses and
                 quantizes each block as it arrives
  streams-N      as pool-N, each thread on its own stream (waits for it; the main stream is recorded on the params)
  prefault-N     N threads read each tensor's pages on the CPU first (page faults in parallel), then the repo's load
"""

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

T0 = time.perf_counter()
import torch  # noqa: E402
from diffusers import FluxPipeline  # noqa: E402

from deployments.config import FluxConfig  # noqa: E402
from deployments.engines import flux_loading  # noqa: E402
from deployments.engines.flux_speedups import fuse_qkv_projections  # noqa: E402
from deployments.engines.fp8 import float8_linears  # noqa: E402

mode, folder = sys.argv[1], sys.argv[2]
name, _, n = mode.partition("-")
threads = int(n or 0)
times = {"imports": time.perf_counter() - T0}


def lap(label: str) -> None:
    torch.cuda.synchronize()
    times[label] = time.perf_counter() - T0 - sum(times.values())


config = FluxConfig(precision="fp8", fuse_qkv=True, model=folder, offline=True)
device = torch.device("cuda")
torch.cuda.init()
torch.empty(1, device=device)
lap("cuda init")
pipe = FluxPipeline.from_pretrained(folder, dtype=torch.bfloat16, local_files_only=True, use_safetensors=True)
lap("from_pretrained (CPU)")
blocks = [*pipe.transformer.transformer_blocks, *pipe.transformer.single_transformer_blocks]
t5_layers = list(pipe.text_encoder_2.encoder.block)

if name == "seq":
    flux_loading.quantize_fp8(pipe.transformer, config, device, None)
    lap("fuse + fp8 quantize")
    pipe.to(device)
    lap("to cuda")
elif name == "prefault":
    tensors = [t for module in (pipe.transformer, pipe.text_encoder_2, pipe.text_encoder) for t in module.parameters()]

    def touch(t: torch.Tensor) -> None:
        flat = t.detach().reshape(-1).view(torch.int16)
        flat[::2048].sum()  # one element per 4 KiB page

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(touch, tensors))
    lap("prefault")
    flux_loading.quantize_fp8(pipe.transformer, config, device, None)
    lap("fuse + fp8 quantize")
    pipe.to(device)
    lap("to cuda")
else:
    local = threading.local()
    main_stream = torch.cuda.current_stream()

    def move(module: torch.nn.Module) -> None:
        if name == "streams":
            if not hasattr(local, "stream"):
                local.stream = torch.cuda.Stream(device)
            with torch.cuda.stream(local.stream):
                module.to(device)
            local.stream.synchronize()
        else:
            module.to(device)

    work = [*blocks, *t5_layers]
    with ThreadPoolExecutor(threads) as pool:
        arrivals = {i: pool.submit(move, work[i]) for i in range(min(threads, len(work)))}
        for i, block in enumerate(blocks):
            arrivals.pop(i).result()
            if i + threads < len(work):
                arrivals[i + threads] = pool.submit(move, work[i + threads])
            if name == "streams":
                for p in block.parameters():
                    p.record_stream(main_stream)
            fuse_qkv_projections(block)
            float8_linears(block, device)
        lap("fuse + fp8 quantize")
        for future in arrivals.values():
            future.result()
        list(pool.map(move, work[len(blocks) + threads :]))  # the T5 layers not yet queued
    pipe.to(device)
    lap("to cuda")
times["total"] = sum(times.values()) - times["imports"] - times["cuda init"]
times["fp8 checksum"] = sum(
    float(buffer.float().sum()) for label, buffer in pipe.transformer.named_buffers() if "weight" in label
)
times["t5 checksum"] = sum(float(p.float().sum()) for p in pipe.text_encoder_2.parameters())
for module in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.vae):
    assert all(t.device.type == "cuda" for t in (*module.parameters(), *module.buffers()))
times["allocated_gib"] = torch.cuda.memory_allocated() / 2**30
times["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
print(mode, json.dumps({k: round(v, 3) for k, v in times.items()}), flush=True)
