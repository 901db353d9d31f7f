"""One-off: where loading the fp8 engine's pipeline from a local diffusers folder goes, against plain diffusers.
Usage: python load_phases.py diffusers|diffusers-device-map|vortex FOLDER  (vortex: whichever deployments/ is first
on PYTHONPATH)."""

import json
import sys
import time

T0 = time.perf_counter()
import torch  # noqa: E402
from diffusers import FluxPipeline  # noqa: E402

from deployments.config import FluxConfig  # noqa: E402
from deployments.engines import flux_loading  # noqa: E402

mode, folder = sys.argv[1], sys.argv[2]
times = {"imports": time.perf_counter() - T0}


def lap(name: str) -> None:
    torch.cuda.synchronize()
    times[name] = time.perf_counter() - T0 - sum(times.values())


common = {"dtype": torch.bfloat16, "local_files_only": True, "use_safetensors": True}
if mode == "diffusers":
    pipe = FluxPipeline.from_pretrained(folder, **common)
    lap("from_pretrained (CPU)")
    pipe.to("cuda")
    lap("to cuda")
elif mode == "diffusers-device-map":
    pipe = FluxPipeline.from_pretrained(folder, device_map="cuda", **common)
    lap("from_pretrained (device_map cuda)")
else:
    config = FluxConfig(precision="fp8", fuse_qkv=True, model=folder, offline=True)
    device = torch.device("cuda")
    pipe = FluxPipeline.from_pretrained(folder, **common)
    lap("from_pretrained (CPU)")
    flux_loading.quantize_fp8(pipe.transformer, config, device)
    lap("fuse + fp8 quantize")
    pipe.to(device)
    lap("to cuda")
times["total"] = sum(times.values()) - times["imports"]
if mode == "vortex":  # the same weights either way: the fp8 buffers' sum must agree
    times["fp8 checksum"] = sum(
        float(buffer.float().sum()) for name, buffer in pipe.transformer.named_buffers() if "weight" in name
    )
times["allocated_gib"] = torch.cuda.memory_allocated() / 2**30
times["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
print(mode, json.dumps({k: round(v, 3) for k, v in times.items()}), flush=True)
