"""Flux engine speed and memory against plain diffusers, on one card, in one run.

    python -m benchmarks.flux_speed                                   # every mode (about 10 minutes on an H100)
    python -m benchmarks.flux_speed --modes vortex-bf16 diffusers-nf4 vortex-nf4 --out a.json
    python -m benchmarks.flux_speed --model /path/to/FLUX.1-schnell   # real weights instead of random ones
    python -m benchmarks.flux_speed --rehearse                        # CPU, tiny models: the script still runs

At 512x512, 4 steps, guidance 0, T5 length 256 it measures, per mode: load time, warm-up time
(compilation and CUDA graph capture, done at replica start in the service), batch-1 latency
P50/P90/P99, throughput at batch 1, 2, 4, 8, peak `max_memory_allocated` / `max_memory_reserved`,
and how far its seed-0 image is from the plain-diffusers bf16 one (mean absolute difference in
[0, 1] pixel units: a check that a mode still computes the same model). Every call uses a new
prompt, so nothing is served from the engine's prompt cache unless a row says so.

The baseline, plain diffusers `FluxPipeline` eager bf16, always runs first, on the full-size
FLUX.1-schnell architecture with seeded random weights (speed and memory do not depend on weight
values), which it saves to /dev/shm for the modes that load from disk (NF4 and the 12 GB modes
use the production `from_pretrained` path). Each mode runs in its own process, so peak memory is
its own, and a mode that crashes or hangs costs only its `--timeout-s`.

Modes: diffusers-bf16 (baseline), vortex-bf16 (fused QKV, regional compile, CUDA graphs; also
prints the step-by-step progression from eager), vortex-fp8, diffusers-nf4 (the original NF4
approach: NF4 transformer, bf16 T5, eager), vortex-nf4 (plus compile and CUDA graphs),
diffusers-12gb (NF4 transformer and T5, double quant, model CPU offload) and vortex-12gb
(`configs/gpu-12gb.yaml`'s `flux:` block: NF4 transformer resident, text encoders streamed from pinned
memory, prompt cache). Our engines' modes (except vortex-bf16's progression) also report peak allocated
memory by phase: loading, the warm-up of each size, and one new prompt at each size (the 12 GB mode at every
size its profile offers). It prints a table naming the card and versions and writes JSON. `--rehearse` runs
the modes a CPU can (bf16 and fp8 with fused QKV, no compile or CUDA graphs) on tiny models at
128x128, all in one process: its numbers mean nothing.
"""

import argparse
import functools
import gc
import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from benchmarks.common import (
    REPO,
    SIDE,
    STEPS,
    T5_TOKENS,
    app_args,
    card_name,
    diffusers_runner,
    percentile,
    prompt,
    timed,
    versions,
)
from deployments.config import FluxConfig, width_height
from deployments.vram import GIB

if TYPE_CHECKING:  # the parent process runs no model: the engines load in each mode's process
    from deployments.engines.flux import FluxEngine

BATCHES = (1, 2, 4, 8)
CHECKPOINT = Path("/dev/shm/vortex-flux-random")
FAST = {"fuse_qkv": True, "compile": "regional", "cuda_graphs": 8}
MODES: dict[str, dict] = {
    "diffusers-bf16": {"precision": "bf16"},
    "vortex-bf16": {"precision": "bf16", **FAST},
    "vortex-fp8": {"precision": "fp8", **FAST},
    "diffusers-nf4": {"precision": "nf4"},
    "vortex-nf4": {"precision": "nf4", "compile": "regional", "cuda_graphs": 8},
    "diffusers-12gb": {"precision": "nf4", "t5_nf4": True, "nf4_double_quant": True, "cpu_offload": True},
    # The profile's own flux: block, so that the benchmark measures the 12 GB mode as it ships.
    "vortex-12gb": app_args("configs/gpu-12gb.yaml")["flux"],
}
# The 12 GB mode starts (warms up) and serves at every size its profile offers: its memory is measured at each.
PROFILE_12GB_SIZES = [width_height(size) for size in app_args("configs/gpu-12gb.yaml")["limits"]["sizes"]]
BUILT_IN_MEMORY = ("diffusers-bf16", "vortex-bf16", "vortex-fp8")  # the others load the saved checkpoint
LOW_MEMORY = ("diffusers-12gb", "vortex-12gb")  # batch 1 only: their point is the memory cap
# The CPU rehearsal: tiny models in fp32 (bf16 matmuls are slow on CPUs), no compile or CUDA graphs.
REHEARSAL = {"modes": BUILT_IN_MEMORY, "side": 128, "batches": (1, 2), "drop": ("compile", "cuda_graphs")}


class Prompts:
    """A new prompt for every image, so that no mode is timed on cached prompt embeddings."""

    def __init__(self) -> None:
        self.counter = itertools.count()

    def take(self, n: int) -> list[str]:
        return [prompt(next(self.counter)) for _ in range(n)]


def measure(run: Callable[[list[str], list[int]], torch.Tensor], iterations: int, batches: tuple[int, ...]) -> dict:
    """`run(prompts, seeds)` generates one image per seed. Returns latency and throughput figures."""
    prompts = Prompts()
    batch1 = timed(lambda: run(prompts.take(1), [0]), iterations)
    result = {"p50": statistics.median(batch1), "p90": percentile(batch1, 90), "p99": percentile(batch1, 99)}
    result["images_per_s"] = {1: 1 / result["p50"]}
    for batch in batches[1:]:
        run(prompts.take(batch), list(range(batch)))  # a new shape: tune or capture outside the timing
        seconds = timed(lambda b=batch: run(prompts.take(b), list(range(b))), max(2, iterations // batch))
        result["images_per_s"][batch] = batch / statistics.median(seconds)
    return result


def engine_runner(engine: "FluxEngine", side: int) -> Callable[[list[str], list[int]], torch.Tensor]:
    def run(prompts: list[str], seeds: list[int]) -> torch.Tensor:
        return engine.generate(prompts, seeds=seeds, width=side, height=side, steps=STEPS)

    return run


def vae_decode_ms(pipe, side: int, iterations: int = 5) -> float:
    channels = pipe.vae.config.latent_channels
    latents = torch.randn(1, channels, side // 8, side // 8, device=pipe.vae.device, dtype=pipe.vae.dtype)
    with torch.inference_mode():
        pipe.vae.decode(latents)
        return 1000 * statistics.median(timed(lambda: pipe.vae.decode(latents), iterations))


def memory_gib(kind: str) -> float:
    """torch's peak `allocated` or `reserved` CUDA memory since the last reset; 0 on the CPU."""
    if not torch.cuda.is_available():
        return 0.0
    return getattr(torch.cuda, f"max_memory_{kind}")() / GIB


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def mode_config(mode: str, model: str | None, rehearse: bool) -> tuple[FluxConfig, dict]:
    """The engine config a mode runs, and its settings as the table reports them."""
    settings = MODES[mode]
    if rehearse:
        settings = {key: value for key, value in settings.items() if key not in REHEARSAL["drop"]}
        if settings["precision"] == "bf16":
            settings["precision"] = "fp32"
        side = REHEARSAL["side"]  # the engine warms up at the allowed side nearest 512
        return FluxConfig(random_weights="tiny", device="cpu", min_side=side, max_side=side, **settings), settings
    source = {"model": model} if model else {"random_weights": "full"}
    if mode not in BUILT_IN_MEMORY:
        source = {"model": model or str(CHECKPOINT), "offline": True}
    return FluxConfig(**source, device="cuda", **settings), settings


def run_mode(mode: str, model: str | None, iterations: int, save_checkpoint: bool, rehearse: bool) -> dict:
    """One mode, in this process. Writes its seed-0 image for the cross-mode check."""
    from deployments.engines.flux import FluxEngine
    from deployments.engines.flux_loading import load_flux_pipeline

    config, settings = mode_config(mode, model, rehearse)
    side = REHEARSAL["side"] if rehearse else SIDE
    result: dict = {"mode": mode, "config": settings, "card": card_name(), "versions": versions(), "side": side}
    batches = (1,) if mode in LOW_MEMORY else REHEARSAL["batches"] if rehearse else BATCHES
    sizes = PROFILE_12GB_SIZES if mode == "vortex-12gb" else [(side, side)]  # where our engines' memory is measured
    reset_peak_memory()
    start = time.perf_counter()

    if mode.startswith("diffusers"):
        pipe = load_flux_pipeline(config, torch.device(config.device))
        pipe.set_progress_bar_config(disable=True)
        result["load_s"] = time.perf_counter() - start
        run = diffusers_runner(pipe, side)
        start = time.perf_counter()
        run(["warm-up"], [0])  # cuBLAS and cuDNN initialisation
        result["warmup_s"] = time.perf_counter() - start
        if mode == "diffusers-bf16" and not model:
            result["vae_decode_ms"] = vae_decode_ms(pipe, side)
    elif mode == "vortex-bf16":
        result.update(progression(config, iterations, side, batches))
        engine = result.pop("engine")
        run = engine_runner(engine, side)
    else:
        engine = FluxEngine.load(config, warmup_batch_sizes=())
        result["load_s"] = time.perf_counter() - start
        phases = result["peak_allocated_gib_by_phase"] = {"load": memory_gib("allocated")}
        start = time.perf_counter()
        for width, height in sizes:  # what the replica does before it serves, one size at a time
            reset_peak_memory()
            engine.warm_up([(width, height)], batches)
            phases[f"warm-up {width}x{height}"] = memory_gib("allocated")
        result["warmup_s"] = time.perf_counter() - start
        run = engine_runner(engine, side)

    # The replica's start, loading and warm-up (each size's warm-up was measured on its own).
    result["load_peak_allocated_gib"] = max(
        [memory_gib("allocated"), *result.get("peak_allocated_gib_by_phase", {}).values()]
    )
    reset_peak_memory()  # from here on: serving
    result["image_seed0"] = str(CHECKPOINT.with_name(f"vortex-image-{mode}.pt"))
    torch.save(run([prompt(0)], [0]).float().cpu(), result["image_seed0"])
    result.update(measure(run, iterations if mode not in LOW_MEMORY else max(3, iterations // 2), batches))
    if mode == "vortex-12gb":
        result["p50_repeated_prompt"] = statistics.median(timed(lambda: run([prompt(0)], [1]), 3))
    result["peak_allocated_gib"] = memory_gib("allocated")
    result["peak_reserved_gib"] = memory_gib("reserved")
    if "peak_allocated_gib_by_phase" in result:
        result["new_prompt_s_by_size"] = {}
        for width, height in sizes:  # one new prompt at each size: text encoding, denoising and decoding
            reset_peak_memory()
            new_prompt = functools.partial(
                engine.generate, [prompt(1000 + width + height)], seeds=[0], width=width, height=height, steps=STEPS
            )
            result["new_prompt_s_by_size"][f"{width}x{height}"] = timed(new_prompt, 1)[0]
            result["peak_allocated_gib_by_phase"][f"new prompt {width}x{height}"] = memory_gib("allocated")
    if save_checkpoint:
        start = time.perf_counter()
        pipe.save_pretrained(CHECKPOINT, safe_serialization=True)
        result["saved_checkpoint_s"] = time.perf_counter() - start
    return result


def progression(config: FluxConfig, iterations: int, side: int, batches: tuple[int, ...]) -> dict:
    """Our bf16 engine with one optimisation added at a time, batch-1 P50 after each."""
    from deployments.engines.flux import FluxEngine
    from deployments.engines.flux_speedups import optimize_pipeline

    start = time.perf_counter()
    plain = config.model_copy(update={"fuse_qkv": False, "compile": "none", "cuda_graphs": 0})
    engine = FluxEngine.load(plain)
    result: dict = {"load_s": time.perf_counter() - start, "progression": {}}
    run = engine_runner(engine, side)
    prompts = Prompts()
    run(prompts.take(1), [0])

    def p50() -> float:
        return statistics.median(timed(lambda: run(prompts.take(1), [0]), max(3, iterations // 2)))

    result["progression"]["eager: our engine without speed options"] = p50()
    steps = [("+ fused QKV", {"fuse_qkv": True})]
    if config.compile != "none":
        steps.append(("+ regional torch.compile", {"compile": config.compile}))
    if config.cuda_graphs:
        steps.append(("+ CUDA graphs", {"cuda_graphs": config.cuda_graphs}))
    warmup_s = 0.0
    for label, option in steps:
        optimize_pipeline(engine.pipe, FluxConfig(**option))  # adds just this option
        engine.config = engine.config.model_copy(update=option)
        start = time.perf_counter()
        engine.warm_up([(side, side)], [1] if label != "+ CUDA graphs" else batches)
        warmup_s += time.perf_counter() - start
        result["progression"][label] = p50()
    result["warmup_s"] = warmup_s
    result["engine"] = engine
    return result


def print_table(card: str, results: list[dict], found: dict) -> None:
    baseline = next(r for r in results if r["mode"] == "diffusers-bf16" and "p50" in r)
    reference = torch.load(baseline["image_seed0"])
    side = baseline["side"]
    print(f"\nFLUX.1-schnell, {side}x{side}, {STEPS} steps, guidance 0, T5 {T5_TOKENS}; card: {card}; {found}\n")
    rates = "".join(f"{'img/s b' + str(b):>10}" for b in BATCHES)
    print(
        f"{'mode':<16}{'load s':>8}{'warm s':>8}{'P50 s':>8}{'P90 s':>8}{'P99 s':>8}{rates}"
        f"{'alloc GiB':>10}{'resv GiB':>9}{'x P50':>7}{'|d| img':>9}"
    )
    for row in results:
        if "error" in row:
            print(f"{row['mode']:<16} FAILED: {row['error'][-300:]}")
            continue
        per_batch = "".join(
            f"{row['images_per_s'][str(b)] if str(b) in row['images_per_s'] else float('nan'):>10.2f}" for b in BATCHES
        )
        difference = (torch.load(row["image_seed0"]) - reference).abs().mean().item()
        row["mean_abs_difference_from_baseline"] = difference
        print(
            f"{row['mode']:<16}{row['load_s']:>8.1f}{row['warmup_s']:>8.1f}{row['p50']:>8.3f}{row['p90']:>8.3f}"
            f"{row['p99']:>8.3f}{per_batch}{row['peak_allocated_gib']:>10.2f}{row['peak_reserved_gib']:>9.2f}"
            f"{baseline['p50'] / row['p50']:>7.2f}{difference:>9.4f}"
        )
    by_mode = {row["mode"]: row for row in results if "p50" in row}
    base_rate = baseline["images_per_s"]["1"]
    print("\nRatios to the plain-diffusers bf16 baseline of this run (targets from issue 7):")
    for mode in ("vortex-bf16", "vortex-fp8"):
        if mode in by_mode:
            row = by_mode[mode]
            best = max(row["images_per_s"].values())
            print(
                f"  {mode}: batch-1 P50 {row['p50']:.3f} s (target <= 0.150), {baseline['p50'] / row['p50']:.2f}x "
                f"faster (target >= 2x); best engine throughput {best:.2f} img/s = {best / base_rate:.2f}x the "
                "baseline batch-1 rate"
            )
    if "vortex-nf4" in by_mode and "vortex-bf16" in by_mode:
        ratio = by_mode["vortex-nf4"]["p50"] / by_mode["vortex-bf16"]["p50"]
        print(f"  vortex-nf4 / vortex-bf16 batch-1 latency: {ratio:.2f}x (target <= 1.15x)")
    for mode in LOW_MEMORY:
        if mode in by_mode:
            row = by_mode[mode]
            cached = f", repeated prompt {row['p50_repeated_prompt']:.2f} s" if "p50_repeated_prompt" in row else ""
            print(
                f"  {mode}: {row['p50']:.2f} s/image{cached}, peak allocated {row['peak_allocated_gib']:.2f} GiB "
                f"generating, {row['load_peak_allocated_gib']:.2f} GiB starting (targets <= 2.0 s, <= 6.0 GiB)"
            )
    for row in by_mode.values():
        if "peak_allocated_gib_by_phase" in row:
            phases = row["peak_allocated_gib_by_phase"]
            worst = max(phases, key=phases.get)
            print(f"\n{row['mode']} peak allocated by phase (highest: {worst}, {phases[worst]:.2f} GiB):")
            for phase, gib in phases.items():
                print(f"  {phase:<24}{gib:>6.2f} GiB")
            seconds = ", ".join(f"{size} {s:.3f} s" for size, s in row["new_prompt_s_by_size"].items())
            print(f"  one new prompt at each size: {seconds}")
    for row in results:
        if "progression" in row:
            print(f"\n{row['mode']} step by step (batch-1 P50; baseline {baseline['p50']:.3f} s):")
            for label, seconds in row["progression"].items():
                print(f"  {label:<52}{seconds:.3f} s")
        if "vae_decode_ms" in row:
            print(f"  {row['mode']}: VAE decode at {side}x{side}, batch 1, eager: {row['vae_decode_ms']:.1f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=list(MODES)[1:], help="default: every mode")
    parser.add_argument("--model", help="A FLUX.1-schnell folder with real weights instead of random ones.")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--timeout-s", type=int, default=240, help="Per mode, load and warm-up included.")
    parser.add_argument("--rehearse", action="store_true", help="CPU rehearsal: tiny models, the CPU's modes.")
    parser.add_argument("--out", default="flux_speed.json")
    parser.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--save-checkpoint", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # one mode in this process; the parent reads the last line
        result = run_mode(args.child, args.model, args.iterations, args.save_checkpoint, args.rehearse)
        print("RESULT " + json.dumps(result), flush=True)
        return

    modes = args.modes or [mode for mode in list(MODES)[1:] if not args.rehearse or mode in REHEARSAL["modes"]]
    if args.rehearse and (unfit := set(modes) - set(REHEARSAL["modes"])):
        parser.error(f"--rehearse runs {', '.join(REHEARSAL['modes'])} only, not {', '.join(sorted(unfit))}")
    # The parent never touches CUDA: a context here would sit on the card beside every mode.
    loads_from_disk = not args.model and any(mode not in BUILT_IN_MEMORY for mode in modes)
    results = []
    for mode in ["diffusers-bf16", *modes]:
        command = [sys.executable, "-m", "benchmarks.flux_speed", "--child", mode, "--iterations", str(args.iterations)]
        command += ["--model", args.model] if args.model else []
        command += ["--rehearse"] if args.rehearse else []
        command += ["--save-checkpoint"] if mode == "diffusers-bf16" and loads_from_disk else []
        print(f"--- {mode}", flush=True)
        if args.rehearse:  # tiny models on a CPU: no card to share, so one process runs every mode, quickly
            results.append(json.loads(json.dumps(run_mode(mode, args.model, args.iterations, False, True))))
            continue
        try:
            child = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout_s, cwd=REPO)
            lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
            if lines:
                results.append(json.loads(lines[-1].removeprefix("RESULT ")))
                print(lines[-1], flush=True)
            else:
                results.append({"mode": mode, "error": child.stderr[-2000:]})
                print(child.stderr[-3000:], flush=True)
        except subprocess.TimeoutExpired as timeout:
            tail = (timeout.stderr or b"")[-1500:]
            results.append({"mode": mode, "error": f"timed out after {args.timeout_s} s: {tail!r}"})
            print(results[-1]["error"], flush=True)
        gc.collect()
    card, found = next(((row["card"], row["versions"]) for row in results if "card" in row), ("unknown", {}))
    print_table(card, results, found)
    with open(args.out, "w") as f:
        json.dump({"card": card, "versions": found, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
