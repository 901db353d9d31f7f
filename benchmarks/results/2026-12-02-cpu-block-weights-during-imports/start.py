"""One-off: from process start to the fp8 pipeline loaded on the CPU. Usage: python start.py MODE
(sequential, overlap or overlap-5ms)."""

import time

T0 = time.perf_counter()
import sys  # noqa: E402

mode = sys.argv[1]
from deployments.config import FluxConfig  # noqa: E402

config = FluxConfig(model="/tmp/ovl/ckpt", offline=True, precision="fp8", fuse_qkv=True, device="cpu", min_side=64)
block_weights = None
if mode.startswith("overlap"):
    from deployments.engines import preload
    from deployments.engines.preload import start_reading

    if mode == "overlap-5ms":
        preload.SWITCH_INTERVAL_S = 0.005

    block_weights = start_reading(config)
import torch  # noqa: E402

from deployments.engines.flux import FluxEngine  # noqa: E402, F401  (diffusers, transformers)
from deployments.engines.flux_loading import load_flux_pipeline  # noqa: E402

imports = time.perf_counter() - T0
pipe = load_flux_pipeline(config, torch.device("cpu"), None, block_weights)
if block_weights is not None:
    block_weights.close()
ready = time.perf_counter() - T0
checksum = sum(float(b.float().sum()) for n, b in pipe.transformer.named_buffers() if n.endswith("weight"))
times = f"imports {imports:.1f} s, load {ready - imports:.1f} s, ready {ready:.1f} s"
print(f"{mode}: {times}, fp8 checksum {checksum:.3f}")
