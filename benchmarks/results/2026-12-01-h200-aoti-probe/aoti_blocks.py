"""Prototype: Flux's repeated blocks as AOTInductor packages (weights as inputs, dynamic batch and sequence).

Question: does loading a package instead of tracing with Dynamo make a warm replica start fast, at the same speed?
CPU: tiny fp32 blocks. GPU: full-size bf16 blocks with fused QKV and fp8 linears, as the fp8 profile.
"""

import copy
import os
import sys
import tempfile
import time

import torch
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
from torch import nn
from torch.export import Dim, export

cuda = torch.cuda.is_available()
device = torch.device("cuda" if cuda else "cpu")
dtype = torch.bfloat16 if cuda else torch.float32
dim, heads, head_dim, txt = (3072, 24, 128, 256) if cuda else (64, 2, 32, 32)
pkg_dir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
os.makedirs(pkg_dir, exist_ok=True)
torch.manual_seed(0)
with torch.device(device):
    torch.set_default_dtype(dtype)
    double = FluxTransformerBlock(dim=dim, num_attention_heads=heads, attention_head_dim=head_dim)
    single = FluxSingleTransformerBlock(dim=dim, num_attention_heads=heads, attention_head_dim=head_dim)
    torch.set_default_dtype(torch.float32)
for b in (double, single):
    b.eval().requires_grad_(False)
if cuda:
    from deployments.engines.fp8 import float8_transformer_blocks

    double.attn.fuse_projections()
    for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
        if getattr(double.attn, name, None) is not None:
            delattr(double.attn, name)
    holder = nn.Module()
    holder.transformer_blocks = nn.ModuleList([double])
    holder.single_transformer_blocks = nn.ModuleList([single])
    float8_transformer_blocks(holder, device)


class WeightsAsInputs(nn.Module):
    """block(weights, ...): one compiled program for every block of the class."""

    def __init__(self, block):
        super().__init__()
        object.__setattr__(self, "block", block)  # not a submodule: its weights must not become constants

    def forward(self, weights, hidden, encoder, temb, cos, sin):
        return torch.func.functional_call(self.block, weights, (hidden, encoder, temb, (cos, sin)))


def weights(block):
    return {**dict(block.named_parameters()), **dict(block.named_buffers())}


def inputs(batch, img):
    g = torch.Generator(device).manual_seed(batch * 100000 + img)

    def r(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=dtype)

    return (
        r(batch, img, dim),
        r(batch, txt, dim),
        r(batch, dim),
        r(txt + img, head_dim).float(),
        r(txt + img, head_dim).float(),
    )


def relative_error(reference, outputs):
    return max(
        (a.float() - b.float()).abs().max().item() / (a.float().abs().max().item() + 1e-6)
        for a, b in zip(reference, outputs, strict=True)
    )


def timed(fn, *args, n_iter=10 if cuda else 2):
    """Milliseconds per call, after one call."""
    fn(*args)
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n_iter):
        fn(*args)
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / n_iter * 1000


sizes = {"512": 1024, "1024": 4096} if cuda else {"s": 64, "l": 128}
batch = Dim("batch", min=1, max=4)
img = Dim("img", min=16, max=4096 if cuda else 256)
results = {}
for name, block in (("double", double), ("single", single)):
    wrapper = WeightsAsInputs(block)
    example = inputs(2, next(iter(sizes.values())))
    spec = (
        {k: None for k in weights(block)},
        {0: batch, 1: img},
        {0: batch},
        {0: batch},
        {0: img + txt},
        {0: img + txt},
    )
    t = time.perf_counter()
    with torch.no_grad():
        ep = export(wrapper, (weights(block), *example), dynamic_shapes=spec, strict=False)
    t_export = time.perf_counter() - t
    t = time.perf_counter()
    path = torch._inductor.aoti_compile_and_package(ep, package_path=os.path.join(pkg_dir, f"{name}.pt2"))
    t_compile = time.perf_counter() - t
    t = time.perf_counter()
    runner = torch._inductor.aoti_load_package(path)
    t_load = time.perf_counter() - t
    compiled = copy.copy(block)
    compiled.compile(fullgraph=True)
    row = {
        "export_s": t_export,
        "aoti_compile_s": t_compile,
        "load_s": t_load,
        "package_mb": os.path.getsize(path) / 1e6,
    }
    for size, n in sizes.items():
        for bsz in (1, 2, 4):
            x = inputs(bsz, n)
            with torch.no_grad():
                ref = block(x[0], x[1], x[2], (x[3], x[4]))
                got = runner(weights(block), *x)
                comp = compiled(x[0], x[1], x[2], (x[3], x[4]))
            err, err_c = relative_error(ref, got), relative_error(ref, comp)
            with torch.no_grad():
                ms_aoti = timed(runner, weights(block), *x)
                ms_comp = timed(compiled, x[0], x[1], x[2], (x[3], x[4]))
                ms_eager = timed(block, x[0], x[1], x[2], (x[3], x[4]))
            row[f"{size} b{bsz}"] = (
                f"aoti {ms_aoti:.2f} ms, torch.compile {ms_comp:.2f} ms, eager {ms_eager:.2f} ms; "
                f"rel err aoti {err:.1e} compile {err_c:.1e}"
            )
    # a CUDA graph around the package's call
    if cuda:
        x = inputs(1, sizes["512"])
        w = weights(block)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s), torch.no_grad():
            runner(w, *x)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph, stream=s):
            out = runner(w, *x)
        graph.replay()
        torch.cuda.synchronize()
        with torch.no_grad():
            ref = block(x[0], x[1], x[2], (x[3], x[4]))
        row["cuda graph rel err"] = relative_error(ref, out)
    results[name] = row
    for k, v in row.items():
        print(name, k, v, flush=True)
# a second load, as a warm replica would
for name in ("double", "single"):
    t = time.perf_counter()
    torch._inductor.aoti_load_package(os.path.join(pkg_dir, f"{name}.pt2"))
    print(name, "second load_s", time.perf_counter() - t)
