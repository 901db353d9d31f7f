"""Does the GPU host load a CUDA AOTInductor package at all? python aoti_min.py linear|sdpa|scaled_mm"""

import faulthandler
import sys
import time

import torch
from torch import nn

from deployments.engines.fp8 import Float8Linear

faulthandler.enable()

case = sys.argv[1]
dev = "cuda"
if case == "linear":
    m = nn.Linear(64, 64, device=dev)
    args = (torch.randn(8, 64, device=dev),)
elif case == "sdpa":

    class A(nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    m = A()
    args = tuple(torch.randn(1, 24, 1024, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
elif case == "scaled_mm":
    m = Float8Linear(nn.Linear(3072, 3072, device=dev, dtype=torch.bfloat16), torch.device(dev))
    args = (torch.randn(1024, 3072, device=dev, dtype=torch.bfloat16),)
with torch.no_grad():
    ep = torch.export.export(m, args)
t = time.perf_counter()
path = torch._inductor.aoti_compile_and_package(ep, package_path=f"/tmp/aoti_{case}.pt2")
print(case, "compiled", round(time.perf_counter() - t, 1), "s", flush=True)
t = time.perf_counter()
r = torch._inductor.aoti_load_package(path)
print(case, "loaded", round(time.perf_counter() - t, 3), "s", flush=True)
with torch.no_grad():
    out = r(*args)
    ref = m(*args)
print(case, "max abs diff", (out.float() - ref.float()).abs().max().item(), flush=True)
