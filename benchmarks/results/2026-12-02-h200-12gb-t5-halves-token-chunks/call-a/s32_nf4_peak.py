"""One-off (session 32): where the 12 GB mode's NF4 transformer peaks at 768x768 and 1024x1024, and whether running
the blocks' per-token layers in row chunks brings it down. Regional compile (fullgraph) as the profile has it, a
4 MiB cuBLAS workspace, double quantization. Usage: python s32_nf4_peak.py CHECKPOINT [deadline_s]
"""

import os
import sys
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:1")
import torch
from diffusers import BitsAndBytesConfig, FluxTransformer2DModel
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

START = time.perf_counter()
DEADLINE = float(sys.argv[2]) if len(sys.argv) > 2 else 400
MIB = 2**20
STOCK_SINGLE = FluxSingleTransformerBlock.forward


def log(*args) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s]", *args, flush=True)


def single_chunked(rows: int):
    def forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None):
        text_seq_len = encoder_hidden_states.shape[1]
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        norm_hidden_states, gate = self.norm(hidden_states, emb=temb)
        attn_output = self.attn(
            hidden_states=norm_hidden_states, image_rotary_emb=image_rotary_emb, **(joint_attention_kwargs or {})
        )
        gate = gate.unsqueeze(1)
        parts = []
        for start in range(0, hidden_states.shape[1], rows):
            part = slice(start, start + rows)
            mlp = self.act_mlp(self.proj_mlp(norm_hidden_states[:, part]))
            out = self.proj_out(torch.cat([attn_output[:, part], mlp], dim=2))
            parts.append(hidden_states[:, part] + gate * out)
        hidden_states = torch.cat(parts, dim=1)
        return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]

    return forward


class RowChunks(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, rows: int) -> None:
        super().__init__()
        self.inner, self.rows = inner, rows

    def forward(self, hidden_states):
        return torch.cat([self.inner(part) for part in hidden_states.split(self.rows, dim=1)], dim=1)


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


def main() -> None:
    checkpoint = sys.argv[1]
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )
    transformer = FluxTransformer2DModel.from_pretrained(
        checkpoint, subfolder="transformer", quantization_config=quant, dtype=torch.bfloat16
    ).to("cuda")
    transformer.requires_grad_(False)
    base = torch.cuda.memory_allocated()
    log(f"loaded: {base / 2**30:.3f} GiB allocated")
    stock_ff = [block.ff for block in transformer.transformer_blocks]
    transformer.compile_repeated_blocks(fullgraph=True)
    reference = {}
    variants = [("stock", None, None), ("chunks1024", 1024, 1024), ("chunks512", 512, 512), ("chunks1536", 1536, 1536)]
    for name, single_rows, ff_rows in variants:
        FluxSingleTransformerBlock.forward = single_chunked(single_rows) if single_rows else STOCK_SINGLE
        for block, ff in zip(transformer.transformer_blocks, stock_ff, strict=True):
            block.ff = RowChunks(ff, ff_rows) if ff_rows else ff
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
                record = (name == "stock" and side == 1024) or (name == "chunks1024" and side == 1024)
                if record:
                    torch.cuda.memory._record_memory_history(stacks="python", max_entries=200000)
                out = transformer(**args)[0]
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - before
                if record:
                    snapshot = torch.cuda.memory._snapshot()
                    torch.cuda.memory._record_memory_history(enabled=None)
                times = []
                for _ in range(3):
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    transformer(**args)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t)
            if name == "stock":
                reference[side] = out
                diff = 0.0
            else:
                diff = (out.float() - reference[side].float()).abs().max().item()
            log(
                f"{name:18s} {side}x{side}: first call {compile_s:5.1f} s; peak +{peak / MIB:6.1f} MiB over "
                f"{before / 2**30:.3f} GiB -> {(before + peak) / 2**30:.3f} GiB; call {min(times) * 1000:6.1f} ms; "
                f"max |diff| vs stock {diff:.4f} (ref max {reference[side].abs().max().item():.2f})"
            )
            if record:
                for line in alive_at_peak(snapshot):
                    print("    " + line, flush=True)


if __name__ == "__main__":
    main()
