"""Why the first request after warm-up is slower (0.34-0.49 s against 0.14 s at 512x512 b1, H200).

python first_request.py regional   # from the repository root; on a CPU: the tiny model, no CUDA graphs
"""

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from deployments.config import FluxConfig
from deployments.engines.flux import FluxEngine

cpu = not torch.cuda.is_available()
config = FluxConfig(
    random_weights="tiny" if cpu else "full",
    precision="fp32" if cpu else "fp8",
    fuse_qkv=True,
    compile=sys.argv[1],
    cuda_graphs=0 if cpu else 4,
    compile_cache_dir="/tmp/fr-cc",
    device="cpu" if cpu else "auto",
)
start = time.perf_counter()
engine = FluxEngine.load(config, warmup_sizes=[(512, 512)], warmup_batch_sizes=[1])
print(f"load + warm-up {time.perf_counter() - start:.1f} s", flush=True)


def synchronize() -> None:
    if not cpu:
        torch.cuda.synchronize()


def timed(label: str, prompt: str | None = None, **options) -> None:
    synchronize()
    start = time.perf_counter()
    engine.generate([prompt or label], seeds=[1], width=512, height=512, **options)
    synchronize()
    print(f"{label}: {time.perf_counter() - start:.3f} s", flush=True)


for i in range(2):
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        timed(f"request {i + 1}")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=14, max_name_column_width=60), flush=True)
timed("request 3")
timed("request 4, request 3's prompt, steps 1", prompt="request 3", steps=1)
timed("request 5")
