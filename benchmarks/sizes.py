"""Every size the GPU profiles offer: our engine against plain diffusers, the compute floor, previews, formats.

    python -m benchmarks.sizes                       # configs/gpu-80gb.yaml's engine at its 5 sizes
    python -m benchmarks.sizes --sizes 1024x1024     # one size
    python -m benchmarks.sizes --rehearse            # CPU, tiny model: the script still runs

On one card, batch 1, 4 steps, guidance 0, T5 length 256, per size:
  1. plain diffusers `FluxPipeline`, eager bf16 (the baseline): P50 of `--iterations` calls, and the
     floating-point work of one call counted by `torch.utils.flop_counter` (the transformer's linear
     layers, its attention, and the rest: text encoders and VAE);
  2. the compute floor: that work at this card's measured matmul rates (fp8 `torch._scaled_mm` for
     the transformer's linear layers, which our engine runs in fp8; bf16 for attention and the rest),
     with no time for anything else: no call can be faster;
  3. the profile's engine (fp8, fused QKV, regional compile, CUDA graphs; random full-size weights),
     warmed up at every size: P50 without previews and with `partial_images: 3` (previews after
     steps 1, 2 and 3), new prompts every call;
  4. where one transformer step of the engine spends its time: `torch.profiler`'s kernel times (device
     time on a GPU) grouped into matmuls, attention, Inductor's fused kernels and the rest, and the rate
     the matmuls and the attention reach (the step's counted work over their time);
  5. its last image encoded as png, jpeg and webp at quality 100 and 75 by `serving.encode_images`,
     which the served path runs for every image: milliseconds (median of 5) and bytes; and a preview's
     encoding (`serving.encode_previews`: scaled up to the size, png).
The diffusers pipeline is freed before the engine loads. Prints tables naming the card; writes JSON.
"""

import argparse
import json
from functools import partial

import torch

from benchmarks.common import (
    STEPS,
    app_args,
    card_name,
    diffusers_runner,
    percentile,
    prompt,
    synchronize,
    timed,
    versions,
)
from deployments.config import width_height

PROFILE = "configs/gpu-80gb.yaml"
ATTENTION_OPS = ("attention", "bmm")  # aten._scaled_dot_product_*_attention, and attention as batched matmuls
ENCODINGS = [("png", None), ("jpeg", 100), ("jpeg", 75), ("webp", 100), ("webp", 75)]
# Kernel (GPU) or aten op (CPU) names by kind, for a step's profile; the first group that matches wins.
KERNEL_KINDS = {
    # Inductor's generated kernels (norms, modulation, activations, fp8 scaling), named after the ops they fuse
    "fused": ("triton",),
    "attention": ("attention", "sdpa", "fmha", "flash"),
    "matmul": ("gemm", "nvjet", "cutlass", "scaled_mm", "aten::mm", "addmm", "bmm"),
}


def matmul_tflops(dtype: torch.dtype, device: str) -> float:
    """This card's matmul rate at a large square shape (fp8: `torch._scaled_mm`, as the fp8 engine calls it)."""
    n = 8192 if device == "cuda" else 512
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    if dtype == torch.float8_e4m3fn:
        one = torch.ones((), device=device)
        a8, b8 = a.to(dtype), b.to(dtype).T  # the second operand column-major, as _scaled_mm wants

        def call():
            return torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    else:
        a, b = a.to(dtype), b.to(dtype)

        def call():
            return a @ b

    for _ in range(3):
        call()
    return 2 * n**3 / percentile(timed(call, 10), 50) / 1e12


def counted_work(pipe, width: int, height: int) -> dict[str, float]:
    """TFLOP of one plain-diffusers call at this size, split as the floor needs it."""
    from torch.utils.flop_counter import FlopCounterMode

    run = diffusers_runner(pipe, width, height)
    with FlopCounterMode(display=False) as counter:
        run([prompt(0)], [0])
    counts = counter.get_flop_counts()
    transformer = {str(op): flops for op, flops in counts.get(type(pipe.transformer).__name__, {}).items()}
    attention = sum(flops for op, flops in transformer.items() if any(word in op for word in ATTENTION_OPS))
    linear = sum(transformer.values()) - attention
    return {
        "transformer_linear_tflop": linear / 1e12,
        "transformer_attention_tflop": attention / 1e12,
        "rest_tflop": (counter.get_total_flops() - linear - attention) / 1e12,
    }


def diffusers_baseline(sizes: list[str], iterations: int, rehearse: bool) -> dict[str, dict]:
    """Plain diffusers eager bf16 (fp32 on a CPU), batch 1, per size: P50 seconds and the work counted."""
    import gc

    from deployments.engines.random_models import full_size_flux_pipeline, tiny_flux_pipeline

    pipe = tiny_flux_pipeline(seed=0) if rehearse else full_size_flux_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    baseline = {}
    for size in sizes:
        width, height = width_height(size)
        run = diffusers_runner(pipe, width, height)
        for index in range(3):  # cuBLAS/cuDNN warm-up at this shape
            run([prompt(index)], [index])
        seconds = [timed(partial(run, [prompt(i)], [i]), 1)[0] for i in range(100, 100 + iterations)]
        baseline[size] = {"p50_s": percentile(seconds, 50), **counted_work(pipe, width, height)}
        print(f"plain diffusers {size}: {json.dumps(baseline[size])}", flush=True)
    del pipe, run
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return baseline


def measure(engine, size: str, iterations: int, first_index: int) -> dict:
    """One size: generation with and without previews, then the encodings of its image and of a preview."""
    from deployments.api import preview_steps
    from deployments.engines.flux import to_uint8_pixels
    from deployments.serving import encode_images, encode_previews

    width, height = width_height(size)
    steps_with_previews = preview_steps(3, STEPS)
    previews = []
    index = first_index

    def generate(with_previews: bool):
        nonlocal index
        index += 1
        return engine.generate(
            prompt(index),
            seeds=[index],
            width=width,
            height=height,
            steps=STEPS,
            preview_steps=steps_with_previews if with_previews else (),
            on_preview=lambda step, batch: previews.append(batch),
        )

    generate(True)  # the first call that asks for previews fits their colour map: once per replica
    plain = timed(lambda: generate(False), iterations)
    with_previews = timed(lambda: generate(True), iterations)
    pixels = to_uint8_pixels(generate(False))
    encodings = {}
    for output_format, quality in ENCODINGS:
        encodings[f"{output_format} {quality or ''}".strip()] = {
            "ms": 1000 * percentile(timed(lambda: encode_images(pixels, output_format, quality), 5), 50),  # noqa: B023
            "bytes": len(encode_images(pixels, output_format, quality)[0]),
        }
    return {
        "size": size,
        "step_kernels_ms": step_kernels(engine, width, height),
        "p50_s": percentile(plain, 50),
        "p50_with_previews_s": percentile(with_previews, 50),
        "previews": len(steps_with_previews),
        "preview_encode_png_ms": 1000
        * percentile(timed(lambda: encode_previews(previews[-1], width, height, "png", None), 5), 50),
        "encodings": encodings,
    }


def step_kernels(engine, width: int, height: int) -> dict[str, float]:
    """Milliseconds of one denoising step's kernels by kind (`KERNEL_KINDS`, else "other"), at batch 1.

    The step runs through the compiled blocks but not its CUDA graph, which hides the kernels from the profiler.
    """
    from torch.profiler import ProfilerActivity, profile

    transformer = engine.pipe.transformer
    step = {}
    hook = transformer.register_forward_pre_hook(
        lambda module, args, kwargs: step.update(args=args, kwargs=kwargs), with_kwargs=True
    )
    try:
        engine.generate(prompt(0), seeds=[0], width=width, height=height, steps=1)
    finally:
        hook.remove()
    forward = transformer.forward
    while hasattr(forward, "function"):  # under the engine's TransformerInParts and CudaGraphRunner
        forward = forward.function
    activities = [ProfilerActivity.CUDA] if torch.cuda.is_available() else [ProfilerActivity.CPU]
    with torch.inference_mode(), profile(activities=activities) as profiler:
        forward(*step["args"], **step["kwargs"])
        synchronize()
    kinds = dict.fromkeys([*KERNEL_KINDS, "other"], 0.0)
    for event in profiler.key_averages():
        microseconds = event.self_device_time_total if torch.cuda.is_available() else event.self_cpu_time_total
        name = event.key.lower()
        kind = next((kind for kind, words in KERNEL_KINDS.items() if any(word in name for word in words)), "other")
        kinds[kind] += microseconds / 1000
    return kinds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rehearse", action="store_true", help="CPU rehearsal: the tiny model, small sizes.")
    parser.add_argument("--sizes", nargs="+", help="WIDTHxHEIGHT (default: the profile's limits.sizes)")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--out", default="sizes.json")
    args = parser.parse_args(argv)

    from deployments.config import AppArgs, FluxConfig
    from deployments.engines.flux import FluxEngine

    profile = AppArgs.model_validate(app_args(PROFILE))
    sizes = args.sizes or (["256x256", "512x256"] if args.rehearse else profile.limits.sizes)
    shapes = [width_height(size) for size in sizes]
    if args.rehearse:
        flux = {"random_weights": "tiny", "precision": "fp32", "device": "cpu"}
    else:
        flux = {**profile.flux.model_dump(exclude_defaults=True), "random_weights": "full", "cuda_graphs": len(shapes)}
    card = card_name()
    print(f"card: {card}; {versions()}; flux {json.dumps(flux)}", flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rates = {  # TFLOP/s
        "bf16": matmul_tflops(torch.bfloat16 if device == "cuda" else torch.float32, device),
        "fp8": matmul_tflops(torch.float8_e4m3fn, device) if device == "cuda" else None,
    }
    print(f"matmul rates on {card}: {rates} TFLOP/s", flush=True)
    baseline = diffusers_baseline(sizes, args.iterations, args.rehearse)
    engine = FluxEngine.load(FluxConfig.model_validate(flux), warmup_sizes=shapes, warmup_batch_sizes=[1])
    rows = [measure(engine, size, args.iterations, first_index=1000 * i) for i, size in enumerate(sizes)]

    print(f"\nFLUX.1-schnell, batch 1, {STEPS} steps; card: {card}; engine {json.dumps(flux)}\n")
    print(
        f"{'size':<11}{'TFLOP':>7}{'floor s':>9}{'diffusers s':>12}{'ours s':>8}{'x diffusers':>12}{'x floor':>8}"
        f"{'+3 previews s':>15}{'ms/preview':>11}{'preview png ms':>15}"
    )
    for row in rows:
        work = baseline[row["size"]]
        linear_rate = rates["fp8"] or rates["bf16"]
        row["diffusers_p50_s"] = work["p50_s"]
        row["work"] = {key: value for key, value in work.items() if key.endswith("_tflop")}
        row["floor_s"] = (
            work["transformer_linear_tflop"] / linear_rate
            + (work["transformer_attention_tflop"] + work["rest_tflop"]) / rates["bf16"]
        )
        preview_ms = 1000 * (row["p50_with_previews_s"] - row["p50_s"]) / row["previews"]
        print(
            f"{row['size']:<11}{sum(row['work'].values()):>7.1f}{row['floor_s']:>9.3f}{work['p50_s']:>12.3f}"
            f"{row['p50_s']:>8.3f}{work['p50_s'] / row['p50_s']:>11.2f}x{row['p50_s'] / row['floor_s']:>7.2f}x"
            f"{row['p50_with_previews_s']:>15.3f}{preview_ms:>11.1f}{row['preview_encode_png_ms']:>15.1f}"
        )
    print("\none denoising step's kernels (batch 1), ms, and the rates they reach against the card's measured peaks")
    print(
        f"{'size':<11}{'matmul':>8}{'attention':>10}{'fused':>7}{'other':>7}"
        f"{'matmul TFLOP/s':>16}{'attention TFLOP/s':>19}"
    )
    for row in rows:
        kernels, work = row["step_kernels_ms"], row["work"]
        matmul_rate = work["transformer_linear_tflop"] / STEPS / max(kernels["matmul"], 1e-9) * 1000
        attention_rate = work["transformer_attention_tflop"] / STEPS / max(kernels["attention"], 1e-9) * 1000
        print(
            f"{row['size']:<11}{kernels['matmul']:>8.1f}{kernels['attention']:>10.1f}{kernels['fused']:>7.1f}"
            f"{kernels['other']:>7.1f}{matmul_rate:>16.0f}{attention_rate:>19.0f}"
        )
    print(f"\n{'size':<11}{'format':<10}{'encode ms':>10}{'KiB':>9}")
    for row in rows:
        for name, encoding in row["encodings"].items():
            print(f"{row['size']:<11}{name:<10}{encoding['ms']:>10.1f}{encoding['bytes'] / 1024:>9.0f}")
    result = {"card": card, "versions": versions(), "flux": flux, "steps": STEPS, "matmul_tflops": rates, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
