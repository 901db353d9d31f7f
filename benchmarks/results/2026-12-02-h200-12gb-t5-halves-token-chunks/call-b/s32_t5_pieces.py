"""One-off (session 32): T5-XXL streamed as the 12 GB mode streams it (token table in host memory, leaf-level group
offloading on a side stream, record_stream), its large layers whole or in pieces: seconds per new prompt and peak
allocated above what was allocated before. 4 MiB cuBLAS workspace as the profile."""

import copy
import os
import statistics
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:1")
import torch
from diffusers.hooks import apply_group_offloading
from transformers import T5Config, T5EncoderModel

from deployments.engines.flux_loading import HostEmbedding, split_large_linears
from deployments.engines.random_models import FLUX_SCHNELL_CONFIGS, _seeded_init

MIB = 2**20
START = time.perf_counter()
with _seeded_init(0, "cuda", torch.bfloat16):
    base = T5EncoderModel(T5Config.from_pretrained(FLUX_SCHNELL_CONFIGS / "text_encoder_2"))
base = base.to("cpu").eval()
print(f"[{time.perf_counter() - START:5.1f}s] built T5 on the CPU", flush=True)
ids = torch.randint(0, 32000, (1, 256), generator=torch.Generator().manual_seed(0)).to("cuda")
reference = None
for name, max_mib in (("whole", None), ("pieces<=40MiB", 40), ("pieces<=32MiB", 32), ("whole again", None)):
    t5 = copy.deepcopy(base)
    t5.set_input_embeddings(HostEmbedding(t5.get_input_embeddings().weight))
    if max_mib:
        split_large_linears(t5, max_mib * MIB)
    leaves = sum(isinstance(m, torch.nn.Linear) for m in t5.modules())
    apply_group_offloading(
        t5, onload_device=torch.device("cuda"), offload_type="leaf_level", use_stream=True, record_stream=True
    )
    times, peaks = [], []
    with torch.inference_mode():
        for _ in range(6):
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            out = t5(ids)[0]
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            peaks.append((torch.cuda.max_memory_allocated() - before) / MIB)
    if reference is None:
        reference = out.float()
    diff = (out.float() - reference).abs().max().item()
    print(
        f"[{time.perf_counter() - START:5.1f}s] {name:14s} {leaves:3d} linear leaves: s per prompt "
        f"{[round(x, 3) for x in times]} median of last 5 {statistics.median(times[1:]) * 1000:.0f} ms; peak above "
        f"before {max(peaks[1:]):.1f} MiB; max |diff| vs whole {diff:.4f}",
        flush=True,
    )
    del t5, out
    torch.cuda.empty_cache()
