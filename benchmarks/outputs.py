"""What previews and file formats cost, per size: generation with and without partial images, and encoding.

    python -m benchmarks.outputs                   # configs/gpu-80gb.yaml's engine, 512x512 and 1024x1024
    python -m benchmarks.outputs --rehearse        # CPU, tiny model: the script still runs

First the baseline: plain diffusers `FluxPipeline`, eager bf16, batch 1, at each size (P50 of
`--iterations`; the pipeline is freed before the engine loads). Then on the same card, with the
profile's engine (fp8, fused QKV, regional compile, CUDA graphs; random full-size weights), warmed
up at each size, batch 1, 4 steps:
  - generation without previews, and with `partial_images: 3` (previews after steps 1, 2 and 3,
    as a streamed request asks for them): P50 of `--iterations` calls each, new prompts every call;
  - the last image encoded as png, jpeg and webp at quality 100 and 75 with `serving.encode_images`,
    which the served path runs (in a thread) for every image: milliseconds (median of 5) and bytes;
  - the previews' own encoding (`serving.encode_previews`: scaled up to the size, png), per preview.
Prints a table naming the card; writes JSON.
"""

import argparse
import json
import statistics
import time
from functools import partial

import yaml

from benchmarks.common import REPO, STEPS, card_name, diffusers_runner, percentile, prompt, timed, versions

PROFILE = REPO / "configs/gpu-80gb.yaml"
ENCODINGS = [("png", None), ("jpeg", 100), ("jpeg", 75), ("webp", 100), ("webp", 75)]


def median_ms(call, repeats: int = 5) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return 1000 * statistics.median(seconds)


def diffusers_p50(sizes: list[str], iterations: int, rehearse: bool) -> dict[str, float]:
    """Plain diffusers eager bf16 (fp32 on a CPU), batch 1, P50 seconds per size."""
    import gc

    import torch

    from deployments.engines.random_models import full_size_flux_pipeline, tiny_flux_pipeline

    pipe = tiny_flux_pipeline(seed=0) if rehearse else full_size_flux_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    p50 = {}
    for size in sizes:
        width, height = (int(side) for side in size.split("x"))
        run = diffusers_runner(pipe, width, height)
        for index in range(3):  # cuBLAS/cuDNN warm-up at this shape
            run([prompt(index)], [index])
        seconds = [timed(partial(run, [prompt(i)], [i]), 1)[0] for i in range(100, 100 + iterations)]
        p50[size] = percentile(seconds, 50)
        print(f"plain diffusers {size}: P50 {p50[size]:.3f} s", flush=True)
    del pipe, run
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return p50


def measure(engine, size: str, iterations: int, first_index: int) -> dict:
    """One size: generation with and without previews, then the encodings of its image and of a preview."""
    from deployments.api import preview_steps
    from deployments.engines.flux import to_uint8_pixels
    from deployments.serving import encode_images, encode_previews

    width, height = (int(side) for side in size.split("x"))
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
            "ms": median_ms(lambda: encode_images(pixels, output_format, quality)),  # noqa: B023 (called at once)
            "bytes": len(encode_images(pixels, output_format, quality)[0]),
        }
    return {
        "size": size,
        "p50_s": percentile(plain, 50),
        "p50_with_previews_s": percentile(with_previews, 50),
        "previews": len(steps_with_previews),
        "preview_encode_png_ms": median_ms(lambda: encode_previews(previews[-1], width, height, "png", None)),
        "encodings": encodings,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rehearse", action="store_true", help="CPU rehearsal: the tiny model, small sizes.")
    parser.add_argument("--sizes", nargs="+", help="WIDTHxHEIGHT (default 512x512 1024x1024; rehearsal 256x256)")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--out", default="outputs.json")
    args = parser.parse_args(argv)

    from deployments.config import FluxConfig
    from deployments.engines.flux import FluxEngine

    sizes = args.sizes or (["256x256"] if args.rehearse else ["512x512", "1024x1024"])
    shapes = [tuple(int(side) for side in size.split("x")) for size in sizes]
    if args.rehearse:
        flux = {"random_weights": "tiny", "precision": "fp32", "device": "cpu"}
    else:
        profile = yaml.safe_load(PROFILE.read_text())["applications"][0]["args"]["flux"]
        flux = {**profile, "random_weights": "full", "cuda_graphs": len(shapes)}
    card = card_name()
    print(f"card: {card}; {versions()}; flux {json.dumps(flux)}", flush=True)
    baseline = diffusers_p50(sizes, args.iterations, args.rehearse)
    engine = FluxEngine.load(FluxConfig.model_validate(flux), warmup_sizes=shapes, warmup_batch_sizes=[1])

    rows = [measure(engine, size, args.iterations, first_index=1000 * i) for i, size in enumerate(sizes)]

    print(f"\nbatch 1, {STEPS} steps; card: {card}\n")
    print(
        f"{'size':<11}{'diffusers s':>12}{'ours s':>8}{'ratio':>7}{'+3 previews s':>15}{'per preview ms':>16}"
        f"{'preview png ms':>16}"
    )
    for row in rows:
        row["diffusers_p50_s"] = baseline[row["size"]]
        extra_ms = 1000 * (row["p50_with_previews_s"] - row["p50_s"]) / row["previews"]
        print(
            f"{row['size']:<11}{row['diffusers_p50_s']:>12.3f}{row['p50_s']:>8.3f}"
            f"{row['diffusers_p50_s'] / row['p50_s']:>6.2f}x{row['p50_with_previews_s']:>15.3f}{extra_ms:>16.1f}"
            f"{row['preview_encode_png_ms']:>16.1f}"
        )
    print(f"\n{'size':<11}{'format':<10}{'encode ms':>10}{'KiB':>9}")
    for row in rows:
        for name, encoding in row["encodings"].items():
            print(f"{row['size']:<11}{name:<10}{encoding['ms']:>10.1f}{encoding['bytes'] / 1024:>9.0f}")
    with open(args.out, "w") as f:
        json.dump({"card": card, "versions": versions(), "flux": flux, "steps": STEPS, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
