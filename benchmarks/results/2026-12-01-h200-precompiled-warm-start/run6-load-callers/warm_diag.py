"""One-off (archived as run): where a precompiled warm start goes. `cold` compiles a subset of the fp8 engine's
shapes; then, each in a fresh process, `warm`, `profile` (cProfile of the warm-up, with the callers of what loads
spend most in), `loadseq` and `loadparN` (the region files loaded one by one, or in N threads). From the
repository root: `python benchmarks/results/2026-12-01-h200-precompiled-warm-start/run6-load-callers/warm_diag.py
MODE`. FULL=1: the profile's 20 shapes (run 4's profile); SMALL=1: 512x512 at batches 1-2 (run 6);
REGIONS_DIR: the compile_cache_dir (default /tmp/vcc). CPU=1 runs it on the tiny model (checked on the CPU)."""

import time

START = time.perf_counter()

import cProfile  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import torch  # noqa: E402

from deployments.config import FluxConfig  # noqa: E402
from deployments.engines.flux import FluxEngine  # noqa: E402

CPU = bool(os.environ.get("CPU"))
SIZES = (
    [(512, 512), (768, 768), (1024, 1024), (768, 1024), (1024, 768)]
    if os.environ.get("FULL")
    else [(512, 512), (1024, 1024)]
)
SIZES = [(256, 256)] if CPU else [(512, 512)] if os.environ.get("SMALL") else SIZES
BATCHES = [1, 2, 3, 4] if os.environ.get("FULL") else [1, 2]
CALLERS = r"copy.py:118\(deepcopy\)|prepare_diff_guard_manager|method 'to' of|builtins.compile|_pickle.loads"
ENGINE = (
    {"precision": "fp32", "device": "cpu", "random_weights": "tiny"}
    if CPU
    else {"precision": "fp8", "fuse_qkv": True, "cuda_graphs": 20, "random_weights": "full"}
)


def synchronize() -> None:
    if not CPU:
        torch.cuda.synchronize()


def main(mode: str) -> None:
    config = FluxConfig(**ENGINE, compile="precompiled", compile_cache_dir=os.environ.get("REGIONS_DIR", "/tmp/vcc"))
    print(mode, "imports", round(time.perf_counter() - START, 2), flush=True)
    start = time.perf_counter()
    engine = FluxEngine.load(config, warmup_sizes=(), warmup_batch_sizes=())
    synchronize()
    print("load", round(time.perf_counter() - start, 2), flush=True)
    store = engine.regions
    if mode in ("cold", "warm", "profile"):
        profiler = cProfile.Profile() if mode == "profile" else None
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        engine.warm_up(SIZES, BATCHES)
        synchronize()
        if profiler:
            profiler.disable()
        seconds = round(time.perf_counter() - start, 2)
        print(
            "warm-up", seconds, "loaded", store.loaded, "compiled", store.compiled, "region s", round(store.seconds, 2)
        )
        if profiler:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_callers(CALLERS, 25)
            print("CALLERS\n" + "\n".join(line[:260] for line in out.getvalue().splitlines()[:160]))
        for key in ("cumulative", "tottime") if profiler else ():
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(45)
            print("\n".join(line[:200] for line in out.getvalue().splitlines()[:70]))
        return
    jobs = [
        (path, template)
        for template, digest in store.templates.values()
        for path in sorted((store.folder / digest[:16]).glob("*.bin"))
    ]
    print("files", len(jobs), "MB", round(sum(path.stat().st_size for path, _ in jobs) / 1e6, 1), flush=True)
    start = time.perf_counter()
    if mode == "loadseq":
        times = []
        for path, template in jobs:
            began = time.perf_counter()
            store._load(path, template)
            times.append(round(time.perf_counter() - began, 3))
        print("per file", times)
    else:
        with ThreadPoolExecutor(int(mode.removeprefix("loadpar") or 8)) as pool:
            list(pool.map(lambda job: store._load(*job), jobs))
    print(mode, "all files", round(time.perf_counter() - start, 2), "loaded", store.loaded, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
