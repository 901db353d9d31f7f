"""One-off (session 33): the 12 GB mode's NF4 transformer alone, stock and with its feed-forward layers in pieces
(deployments/engines/nf4.py as committed, halves), and a variant ("addmm"): a single block's attention first, and
each down piece's product added by torch.addmm into the running sum (bitsandbytes' dequantized weight), so that no
piece's product is a tensor of its own: peak above the weights at each size, where it peaks at 1024x1024, time per
call, output against stock. Regional compile (fullgraph) as the profile has it, a 4 MiB cuBLAS workspace, double
quantization. Usage: python s33_nf4_pieces.py CHECKPOINT [deadline_s]
"""

import gc
import os
import sys
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:1")
import bitsandbytes as bnb
import torch
from diffusers import BitsAndBytesConfig, FluxTransformer2DModel

from deployments.engines import nf4
from deployments.engines.nf4 import feed_forward_in_pieces

START = time.perf_counter()
DEADLINE = float(sys.argv[2]) if len(sys.argv) > 2 else 400
MIB = 2**20


def log(*args) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s]", *args, flush=True)


COMMITTED = (nf4.FeedForwardInPieces.forward, nf4.single_block_forward)


def addmm_forward(self, hidden_states, out=None):
    shape = hidden_states.shape
    total = None if out is None else out.reshape(-1, out.shape[-1])
    for up, down in zip(self.up, self.down, strict=True):
        h = self.activation(up(hidden_states)).reshape(-1, down.in_features)
        weight = bnb.functional.dequantize_4bit(down.weight.data, down.weight.quant_state)
        if total is None:
            total = torch.nn.functional.linear(h, weight, down.bias)
        else:
            total = torch.addmm(total, h, weight.t())
    return total.reshape(*shape[:-1], -1)


def attention_first_single(
    self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None
):
    text_seq_len = encoder_hidden_states.shape[1]
    hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    residual = hidden_states
    norm_hidden_states, gate = self.norm(hidden_states, emb=temb)
    attn_output = self.attn(
        hidden_states=norm_hidden_states, image_rotary_emb=image_rotary_emb, **(joint_attention_kwargs or {})
    )
    projected = self.mlp(norm_hidden_states, out=self.attn_out(attn_output))
    hidden_states = residual + gate.unsqueeze(1) * projected
    return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]


def inputs(side: int):
    tokens = (side // 16) ** 2
    g = torch.Generator("cuda").manual_seed(0)
    img_ids = torch.zeros(side // 16, side // 16, 3, device="cuda")
    img_ids[..., 1] += torch.arange(side // 16, device="cuda")[:, None]
    img_ids[..., 2] += torch.arange(side // 16, device="cuda")[None, :]
    return dict(
        hidden_states=torch.randn(1, tokens, 64, device="cuda", dtype=torch.bfloat16, generator=g),
        encoder_hidden_states=torch.randn(1, 256, 4096, device="cuda", dtype=torch.bfloat16, generator=g),
        pooled_projections=torch.randn(1, 768, device="cuda", dtype=torch.bfloat16, generator=g),
        timestep=torch.tensor([1.0], device="cuda", dtype=torch.bfloat16),
        img_ids=img_ids.reshape(-1, 3),
        txt_ids=torch.zeros(256, 3, device="cuda"),
        return_dict=False,
    )


def alive_at_peak(snapshot) -> list[str]:
    """Replay the allocator trace; at the peak, sum the live blocks by their innermost interesting frames."""
    events = snapshot["device_traces"][0]
    live, total, peak, at_peak = {}, 0, 0, {}
    for e in events:
        if e["action"] == "alloc":
            live[e["addr"]] = e
            total += e["size"]
            if total > peak:
                peak, at_peak = total, dict(live)
        elif e["action"] == "free_completed" and e["addr"] in live:
            total -= live.pop(e["addr"])["size"]
    by_site = {}
    for e in at_peak.values():
        frames = [f for f in e.get("frames", []) if "torch/" not in f["filename"] or "nn/modules" in f["filename"]]
        site = " < ".join(f"{f['filename'].rsplit('/', 1)[-1]}:{f['line']}:{f['name']}" for f in frames[:4])
        size, count = by_site.get(site, (0, 0))
        by_site[site] = (size + e["size"], count + 1)
    lines = [f"traced peak +{peak / MIB:.1f} MiB (from trace start)"]
    for site, (size, count) in sorted(by_site.items(), key=lambda kv: -kv[1][0])[:14]:
        lines.append(f"  {size / MIB:7.1f} MiB x{count}  {site[:260]}")
    return lines


def run_variant(name: str, pieces: int, checkpoint: str, quant, reference: dict) -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    transformer = FluxTransformer2DModel.from_pretrained(
        checkpoint, subfolder="transformer", quantization_config=quant, dtype=torch.bfloat16
    ).to("cuda")
    transformer.requires_grad_(False)
    loaded = torch.cuda.memory_allocated()
    t = time.perf_counter()
    if pieces:
        feed_forward_in_pieces(transformer, pieces)
    if name.startswith("addmm"):
        nf4.FeedForwardInPieces.forward = addmm_forward
        for block in transformer.single_transformer_blocks:
            block.forward = attention_first_single.__get__(block)
    else:
        nf4.FeedForwardInPieces.forward = COMMITTED[0]
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    log(
        f"{name}: loaded {loaded / 2**30:.3f} GiB; split in {time.perf_counter() - t:.2f} s -> {base / 2**30:.3f} "
        f"GiB; load peak {torch.cuda.max_memory_allocated() / 2**30:.3f} GiB"
    )
    transformer.compile_repeated_blocks(fullgraph=True)
    torch._dynamo.reset()
    for side in (512, 768, 1024):  # the profile's warm-up order (dynamic shapes from the second)
        if time.perf_counter() - START > DEADLINE:
            log("deadline: stopping")
            return
        args = inputs(side)
        with torch.inference_mode():
            t = time.perf_counter()
            transformer(**args)
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - t
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            record = side == 1024
            if record:
                torch.cuda.memory._record_memory_history(stacks="python", max_entries=200000)
            out = transformer(**args)[0]
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
            if record:
                snapshot = torch.cuda.memory._snapshot()
                torch.cuda.memory._record_memory_history(enabled=None)
            times = []
            for _ in range(5):
                torch.cuda.synchronize()
                t = time.perf_counter()
                transformer(**args)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
        if name == "stock":
            reference[side] = out
        diff = (out.float() - reference[side].float()).abs()
        log(
            f"{name:8s} {side}x{side}: first call {compile_s:5.1f} s; peak +{peak / MIB:6.1f} MiB over "
            f"{before / 2**30:.3f} GiB -> {(before + peak) / 2**30:.3f} GiB; call min {min(times) * 1000:6.1f} ms "
            f"median {sorted(times)[2] * 1000:6.1f} ms; |diff| vs stock max {diff.max().item():.4f} mean "
            f"{diff.mean().item():.5f} (ref max {reference[side].abs().max().item():.2f})"
        )
        if record:
            for line in alive_at_peak(snapshot):
                print("    " + line, flush=True)
    del transformer, out
    torch._dynamo.reset()


def main() -> None:
    checkpoint = sys.argv[1]
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )
    reference = {}
    variants = (("stock", 0), ("halves", 2), ("addmm4", 4), ("addmm3", 3), ("addmm2", 2))
    for name, pieces in variants:
        try:
            run_variant(name, pieces, checkpoint, quant, reference)
        except Exception as error:
            log(f"{name}: failed: {type(error).__name__}: {str(error)[:600]}")
        torch._dynamo.reset()


if __name__ == "__main__":
    main()
