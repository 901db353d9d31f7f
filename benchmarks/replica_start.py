"""How long a new generator replica takes to serve, with a cold and with a warm compile cache.

    python -m benchmarks.replica_start                     # configs/gpu-80gb.yaml's engine and sizes
    python -m benchmarks.replica_start --compile regional  # the same engine, regionally compiled instead
    python -m benchmarks.replica_start --rehearse          # CPU, tiny model, one process: the script still runs
    python -m benchmarks.replica_start --starts cold --cache-dir D; ... --starts warm --cache-dir D   # in two calls
    python -m benchmarks.replica_start --model DIR           # weights read from a diffusers folder on local disk

A replica serves once its engine has loaded (built or read the weights, quantized, fused) and warmed
up: compiled and captured every size of `limits.sizes` at every batch size of
`batching.generator.max_batch_size`, as `FluxGenerator` does. Each start runs in a fresh process, as a
new replica's would, and is timed from the process's start (imports included) to ready:

- cold: an empty `flux.compile_cache_dir`, as on a host that never compiled this engine;
- warm: the same directory again, as for a restarted replica, or a new one on any node that mounts
  the directory.

The baseline is plain diffusers: the same architecture, built the same way, eager, which compiles
nothing. After the warm start the child generates once at every size for every number of images a request
may ask for (`limits.max_images`; above the batch size the engine runs them in parts) and records whether
anything was compiled or captured (it must not be), and how long each first request took. Weights are the
full-size architecture with seeded random weights, built on the GPU (`random_weights: full`), or with
`--model DIR` read from a diffusers folder on local disk as a replica reads its checkpoint (plain
diffusers then loads the same folder): a real FLUX.1-schnell, or the full-size random one that
`python -m deployments.engines.random_models DIR` saves. Prints a table naming the card; writes JSON.
"""

import argparse
import contextlib
import gc
import json
import subprocess
import sys
import tempfile
import time

from benchmarks.common import REPO, app_args, card_name, versions

PROCESS_START = time.perf_counter()  # the child's own imports count: a replica pays them too
PROFILE = "configs/gpu-80gb.yaml"
STARTS = ["diffusers", "cold", "warm"]
REHEARSAL_FLUX = {"random_weights": "tiny", "precision": "fp32", "device": "cpu"}


def profile_args(rehearse: bool, compile_mode: str | None, model: str | None = None) -> dict:
    """The profile's `args:` with random weights (rehearsal: the CPU profile's tiny model, two small sizes) or the
    checkpoint in the folder `model`, and `compile_mode` instead of the profile's `flux.compile` when given."""
    args = app_args(PROFILE)
    if rehearse:
        args["flux"] = dict(REHEARSAL_FLUX)
        args["limits"] = {"sizes": ["256x256", "256x512"]}
    else:
        args["flux"] = {**args["flux"], "random_weights": "full"}
    if model:
        args["flux"] = {**args["flux"], "random_weights": None, "model": model, "offline": True}
    if compile_mode:
        args["flux"]["compile"] = compile_mode
    return args


class FullCollections:
    """Seconds spent in Python's full (oldest-generation) garbage collections since the last `take()`."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.started = 0.0
        gc.callbacks.append(self.on_collection)

    def on_collection(self, phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                self.started = time.perf_counter()
            else:
                self.seconds += time.perf_counter() - self.started

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def start_replica_engine(
    mode: str, rehearse: bool, cache_dir: str, compile_mode: str | None, model: str | None = None
) -> dict:
    """In this (fresh) process: what `FluxGenerator.__init__` does, timed; then every shape once."""
    from deployments.config import AppArgs, FluxConfig
    from deployments.engines.heap import freeze_startup_heap, imports_without_collections

    args = AppArgs.model_validate(profile_args(rehearse, compile_mode, model))
    config = args.flux if rehearse else FluxConfig(**{**args.flux.model_dump(), "compile_cache_dir": cache_dir})
    # As a replica: the garbage collector paused, an fp8 engine's transformer blocks and T5 read during the imports.
    # Plain diffusers as its users run it.
    with imports_without_collections() if mode != "diffusers" else contextlib.nullcontext():
        import torch

        from deployments.engines.preload import start_reading, use_compile_cache_dir

        early_weights = None
        if mode != "diffusers":
            use_compile_cache_dir(config)
            early_weights = start_reading(config)
        from deployments.engines.cuda_graphs import CudaGraphRunner
        from deployments.engines.flux import FluxEngine, TransformerInParts
        from deployments.engines.random_models import full_size_flux_pipeline, tiny_flux_pipeline
        from deployments.vram import GIB

    imported_s = time.perf_counter() - PROCESS_START
    batches = range(1, args.batching.generator.max_batch_size + 1)
    sizes = args.limits.shapes()
    if mode == "diffusers":
        if model:  # as its users load it
            from diffusers import FluxPipeline

            device, dtype = ("cpu", torch.float32) if rehearse else ("cuda", torch.bfloat16)
            pipe = FluxPipeline.from_pretrained(model, dtype=dtype, local_files_only=True).to(device)
        else:
            pipe = tiny_flux_pipeline(seed=0) if rehearse else full_size_flux_pipeline(seed=0)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        ready_s = time.perf_counter() - PROCESS_START
        parameters = sum(parameter.numel() for parameter in pipe.transformer.parameters())
        return {
            "mode": mode,
            "imports_s": imported_s,
            "load_s": ready_s - imported_s,
            "ready_s": ready_s,
            "transformer_parameters": parameters,
        }

    collections = FullCollections()
    engine = FluxEngine.load(  # as FluxGenerator loads it
        config, warmup_sizes=sizes, warmup_batch_sizes=batches, early_weights=early_weights
    )
    collections_in_start_s = collections.take()
    freeze_startup_heap()  # as FluxGenerator does once its engine is ready
    freeze_s = collections.take()
    ready_s = time.perf_counter() - PROCESS_START
    cuda = torch.cuda.is_available()
    pipe, regions = engine.pipe, engine.regions
    transformer = pipe.transformer.forward
    if isinstance(transformer, TransformerInParts):  # installed with the warm-up
        transformer = transformer.function
    runners = [transformer, pipe.text_encoder.forward, pipe.text_encoder_2.forward, pipe.vae._decode]
    result = {
        "mode": mode,
        "shapes": len(sizes) * len(batches),
        "imports_s": imported_s,
        "load_s": engine.startup_s["load"],
        "warmup_s": engine.startup_s.get("warm-up", 0.0),  # none without compile or CUDA graphs
        "ready_s": ready_s,
        # Where the warm-up went: Dynamo's own phases (tracing, and the backend: Inductor or its cache), and the
        # CUDA graph captures (each with the eager call before it, which is where a new shape compiles; CPU time:
        # the GPU runs behind).
        "dynamo_s": torch._dynamo.utils.calculate_time_spent(),
        "capture_s": {
            name: runner.capture_s
            for name, runner in zip(["transformer", "clip_text", "t5", "vae_decode"], runners, strict=True)
            if hasattr(runner, "capture_s")
        },
        # Full garbage collections (each walks every object not frozen, holding the GIL) after the imports (which
        # run without), and the one collection before the startup heap is frozen.
        "full_collections_s": {"load and warm-up": collections_in_start_s, "freeze": freeze_s},
        "precompiled_regions": None
        if regions is None
        else {
            "loaded": regions.loaded,
            "read_ahead": regions.read_ahead,
            "read_unused": regions.read_unused,
            "compiled": regions.compiled,
            "s": regions.seconds,
        },
        "allocated_gib": torch.cuda.memory_allocated() / GIB if cuda else 0.0,
        "reserved_gib": torch.cuda.memory_reserved() / GIB if cuda else 0.0,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB if cuda else 0.0,  # while loading and warming up
    }

    def compiled_and_captured() -> tuple[int, int]:
        """Graphs compiled in this process by Dynamo, plus precompiled regions loaded or compiled (a region compiled
        may count twice: what matters is whether a request made any), and the CUDA graphs every runner holds."""
        captured = sum(len(runner) for runner in runners if isinstance(runner, CudaGraphRunner))
        regions_made = regions.loaded + regions.compiled if regions is not None else 0
        return torch._dynamo.utils.counters["stats"]["unique_graphs"] + regions_made, captured

    compiled, captured = compiled_and_captured()
    first_request_s = {}
    for width, height in sizes:  # every number of images a request may ask for: above the batch size, in parts
        for batch in range(1, max(batches[-1], args.limits.max_images) + 1):
            prompts = [f"first request at {width}x{height}, image {i} of {batch}" for i in range(batch)]
            start = time.perf_counter()
            engine.generate(prompts, seeds=list(range(batch)), width=width, height=height)
            if cuda:
                torch.cuda.synchronize()
            first_request_s[f"{width}x{height} b{batch}"] = time.perf_counter() - start
    result["first_request_s"] = first_request_s
    result["full_collections_s"]["first requests"] = collections.take()
    gc.callbacks.remove(collections.on_collection)
    gc.unfreeze()  # this process may go on (the rehearsal runs every start in one)
    compiled_after, captured_after = compiled_and_captured()
    result["compiled_on_requests"] = compiled_after - compiled
    result["captured_on_requests"] = captured_after - captured
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rehearse", action="store_true", help="CPU rehearsal: the tiny model, two sizes.")
    parser.add_argument("--cache-dir", help="compile_cache_dir to use (default: a new empty folder, so cold is cold)")
    parser.add_argument("--timeout-s", type=int, default=560, help="Per start.")
    parser.add_argument("--out", default="replica_start.json")
    parser.add_argument("--compile", choices=["regional", "precompiled"], help="instead of the profile's flux.compile")
    parser.add_argument("--model", help="a diffusers folder on local disk to read the weights from (not random)")
    parser.add_argument(
        "--starts",
        nargs="+",
        choices=STARTS,
        default=STARTS,
        help="which starts to run (a warm one needs --cache-dir from an earlier cold one, when run alone)",
    )
    parser.add_argument("--child", choices=STARTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        result = start_replica_engine(args.child, args.rehearse, args.cache_dir, args.compile, args.model)
        print("RESULT " + json.dumps(result), flush=True)
        return

    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="vortex-compile-cache-")
    flux = profile_args(args.rehearse, args.compile, args.model)["flux"]
    card = "CPU rehearsal" if args.rehearse else card_name()
    results = []
    for mode in args.starts:
        print(f"--- {mode}", flush=True)
        if args.rehearse:  # a CPU compiles nothing, so no start is cold: one process runs them all, quickly
            results.append(start_replica_engine(mode, args.rehearse, cache_dir, args.compile, args.model))
            continue
        command = [sys.executable, "-m", "benchmarks.replica_start", "--child", mode, "--cache-dir", cache_dir]
        command += ["--compile", args.compile] if args.compile else []
        command += ["--model", args.model] if args.model else []
        child = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout_s, cwd=REPO)
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            sys.exit(f"{mode} start failed:\n{child.stdout[-3000:]}\n{child.stderr[-3000:]}")
        results.append(json.loads(lines[-1].removeprefix("RESULT ")))
        print(lines[-1], flush=True)

    print(f"\ngenerator replica start, flux {json.dumps(flux)}; card: {card}; {versions()}")
    # Imports are a quarter of a warm start, and most of that is compiling sources where no bytecode is cached
    # (17-19 s instead of 10 s on the H200 host, whose Python sets PYTHONDONTWRITEBYTECODE over a venv without it).
    bytecode = "not written (PYTHONDONTWRITEBYTECODE)" if sys.dont_write_bytecode else "cached"
    print(f"compile cache: {cache_dir}; Python bytecode: {bytecode}\n")
    print(f"{'start':<30}{'imports s':>10}{'load s':>8}{'warm-up s':>11}{'ready s':>9}{'shapes':>8}{'resv GiB':>10}")
    for row in results:
        label = {"diffusers": "plain diffusers (baseline)", "cold": "vortex, cold cache", "warm": "vortex, warm cache"}
        print(
            f"{label[row['mode']]:<30}{row['imports_s']:>10.1f}{row['load_s']:>8.1f}{row.get('warmup_s', 0):>11.1f}"
            f"{row['ready_s']:>9.1f}{row.get('shapes', 0):>8}{row.get('reserved_gib', 0):>10.2f}"
        )
    last = results[-1]
    if "first_request_s" in last:
        slowest = max(last["first_request_s"], key=last["first_request_s"].get)
        print(
            f"\nafter the {last['mode']} start: {last['compiled_on_requests']} graphs compiled and "
            f"{last['captured_on_requests']} captured by requests; slowest first request {slowest}: "
            f"{last['first_request_s'][slowest]:.3f} s"
        )
    for row in results:
        if row["mode"] == "diffusers":
            continue
        phases = {name: round(seconds, 1) for name, seconds in row["dynamo_s"].items()}
        captures = {name: round(seconds, 1) for name, seconds in row["capture_s"].items()}
        print(f"{row['mode']} warm-up: Dynamo {phases}; CUDA graph captures (eager call included) {captures}")
        if row["precompiled_regions"] is not None:
            print(f"{row['mode']} warm-up, precompiled regions: {row['precompiled_regions']}")
        collections = {name: round(seconds, 2) for name, seconds in row["full_collections_s"].items()}
        print(f"{row['mode']} start, full garbage collections (s): {collections}")
        print(f"{row['mode']} start, peak reserved while loading and warming up: {row['peak_reserved_gib']:.2f} GiB")
    for row in results:
        if row["mode"] == "warm":
            print(f"warm start: {row['ready_s']:.1f} s from process start to serving (target: 20 s)")
    with open(args.out, "w") as f:
        json.dump({"card": card, "versions": versions(), "flux": flux, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
