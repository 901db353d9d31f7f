"""Flux engine speed and memory against plain diffusers, in one process on one card.

    python benchmarks/flux_speed.py [--out results.json] [--iterations 10]

Builds the full-size FLUX.1-schnell architecture with seeded random weights on the GPU (bf16), then
measures at 512x512, 4 steps, guidance 0, T5 length 256:
  1. plain diffusers `FluxPipeline` eager bf16 (the baseline): batch-1 latency P50/P90/P99 and
     throughput at batch 1, 2, 4, 8;
  2. Vortex's engine on the same weights with `fuse_qkv` and `compile: regional`, the same figures
     plus the compile time.
Peak VRAM is `torch.cuda.max_memory_allocated` / `max_memory_reserved` per mode. It prints a table
naming the card and versions and writes JSON. Not yet measured here: NF4, the 12 GB mode, fp8 and
served end-to-end load (see the README's Performance section).
"""

import argparse
import json
import statistics
import time

import diffusers
import torch

from deployments.engines.flux import FluxConfig, FluxEngine, optimize_pipeline
from deployments.engines.random_models import full_size_flux_pipeline

PROMPT = "a lighthouse on a cliff at dusk, oil painting, highly detailed"
SIDE, STEPS, T5_TOKENS = 512, 4, 256
BATCHES = (1, 2, 4, 8)


def diffusers_call(pipe, batch: int) -> None:
    pipe(
        PROMPT,
        num_images_per_prompt=batch,
        generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)],
        width=SIDE,
        height=SIDE,
        num_inference_steps=STEPS,
        guidance_scale=0.0,
        max_sequence_length=T5_TOKENS,
        output_type="pt",
    )


def timed(call, iterations: int) -> list[float]:
    seconds = []
    for _ in range(iterations):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def measure(name: str, run, iterations: int, warmup_s: float | None = None) -> dict:
    """`run(batch)` generates one batch; warm-up calls (compilation) are not timed."""
    torch.cuda.reset_peak_memory_stats()
    result = {"mode": name, "warmup_s": warmup_s}
    batch1 = timed(lambda: run(1), iterations)
    result.update(p50=statistics.median(batch1), p90=percentile(batch1, 90), p99=percentile(batch1, 99))
    result["images_per_s"] = {}
    for batch in BATCHES:
        run(batch)  # a new shape: compile or tune outside the timing
        seconds = timed(lambda batch=batch: run(batch), max(2, iterations // batch))
        result["images_per_s"][batch] = batch / statistics.median(seconds)
    result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="flux_speed.json")
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    card = torch.cuda.get_device_name()

    start = time.perf_counter()
    pipe = full_size_flux_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    build_s = time.perf_counter() - start

    diffusers_call(pipe, 1)  # cuBLAS/cuDNN warm-up
    baseline = measure("diffusers eager bf16", lambda batch: diffusers_call(pipe, batch), args.iterations)

    config = FluxConfig(random_weights="full", precision="bf16", device="cuda", fuse_qkv=True, compile="regional")
    optimize_pipeline(pipe, config)
    engine = FluxEngine(pipe, config, torch.device("cuda"))

    def ours(batch: int) -> None:
        engine.generate(PROMPT, seeds=list(range(batch)), width=SIDE, height=SIDE, steps=STEPS)

    start = time.perf_counter()
    ours(1)
    compile_s = time.perf_counter() - start
    vortex = measure("vortex bf16 + fused QKV + regional compile", ours, args.iterations, warmup_s=compile_s)

    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__}
    print(f"\nFLUX.1-schnell architecture, random bf16 weights, {SIDE}x{SIDE}, {STEPS} steps, T5 {T5_TOKENS}")
    print(f"card: {card}; {versions}; build {build_s:.0f} s\n")
    header = f"{'mode':<44}{'P50 s':>8}{'P90 s':>8}{'P99 s':>8}" + "".join(f"{'img/s b' + str(b):>11}" for b in BATCHES)
    print(header + f"{'alloc GiB':>11}{'resv GiB':>10}")
    for row in (baseline, vortex):
        rates = "".join(f"{row['images_per_s'][b]:>11.2f}" for b in BATCHES)
        print(
            f"{row['mode']:<44}{row['p50']:>8.3f}{row['p90']:>8.3f}{row['p99']:>8.3f}{rates}"
            f"{row['peak_allocated_gib']:>11.1f}{row['peak_reserved_gib']:>10.1f}"
        )
    print(
        f"\nvortex / diffusers: batch-1 P50 x{baseline['p50'] / vortex['p50']:.2f} faster; "
        f"batch-8 throughput x{vortex['images_per_s'][8] / baseline['images_per_s'][1]:.2f} the diffusers batch-1 "
        f"rate; compile {compile_s:.0f} s"
    )
    with open(args.out, "w") as f:
        json.dump({"card": card, "versions": versions, "results": [baseline, vortex]}, f, indent=2)


if __name__ == "__main__":
    main()
