"""One-off (archived as run 5): why loaded precompiled regions autotuned again (H200 warm start: 2.6 s of
benchmark_all_configs although the cold start had left .best_config files). MODE: cold | cold-run-first (the
region runs, so autotunes, before it is saved) | warm, at one shape (512x512, batch 1). Prints every
CachingAutotuner's autotune_cache_info state with its compile results and launchers, and every autotune-cache
lookup (from a new kernel or from torch's recheck of a loaded one): its state, and whether a .best_config exists
for it with the same configs_hash. From the repository root: `python <this file> cold`, then `... warm`
(`run.sh`). CPU=1: tiny model on the CPU (a rehearsal: no Triton kernels there)."""

import collections
import gc
import os
import sys
import time

import torch

from deployments.config import FluxConfig
from deployments.engines import precompiled
from deployments.engines.flux import FluxEngine

CPU = bool(os.environ.get("CPU"))


def compile_run_then_save(self, path, template, weights, args, kwargs):
    with torch._dynamo.config.patch(enable_aot_compile=True):
        compiled = torch.compile(
            precompiled.region_function(template),
            fullgraph=True,
            dynamic=False,
            options={"guard_filter_fn": precompiled.no_guards},
        )
        function = compiled.aot_compile(((weights, args, kwargs), {}))
    function(weights, args, kwargs)  # kernels autotune now, before the save
    path.parent.mkdir(parents=True, exist_ok=True)
    function.save_compiled_function(str(path), external_data={"template": template})
    self.compiled += 1
    return function


def main(mode: str) -> None:
    hook_autotune_checks()
    if mode == "cold-run-first":
        precompiled.RegionStore._compile = compile_run_then_save
    engine_args = (
        {"precision": "fp32", "device": "cpu", "random_weights": "tiny"}
        if CPU
        else {"precision": "fp8", "fuse_qkv": True, "cuda_graphs": 20, "random_weights": "full"}
    )
    config = FluxConfig(**engine_args, compile="precompiled", compile_cache_dir="/tmp/vat")
    engine = FluxEngine.load(config, warmup_sizes=(), warmup_batch_sizes=())
    start = time.perf_counter()
    engine.warm_up([(256, 256)] if CPU else [(512, 512)], [1])
    if not CPU:
        torch.cuda.synchronize()
    timings = torch._dynamo.utils.calculate_time_spent()
    regions = engine.regions
    print(
        mode, "warm-up", round(time.perf_counter() - start, 2), "loaded", regions.loaded, "compiled", regions.compiled
    )
    print("timings", timings)
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner

    states = collections.Counter()
    examples = {}
    for obj in gc.get_objects():
        if isinstance(obj, CachingAutotuner):
            info = getattr(obj, "autotune_cache_info", None) or {}
            key = (
                info.get("autotune_cache_state"),
                len(getattr(obj, "compile_results", None) or []),
                len(getattr(obj, "launchers", None) or []),
                getattr(obj, "filename", None) is not None,
            )
            states[key] += 1
            examples.setdefault(
                key, (getattr(obj, "filename", None), {k: v for k, v in info.items() if k != "best_config"})
            )
    print("(cache state, compile results, launchers, has filename): count, example")
    for key, count in states.most_common():
        print(key, count, examples[key])
    print("check_autotune_cache calls:", len(CHECKS))
    summary = collections.Counter((c["via"], c["state"], c["file_exists"], c["hash_match"]) for c in CHECKS)
    print("(via, state, best_config file exists, its configs_hash == ours): count")
    for key, count in summary.most_common():
        print(key, count)
    for c in CHECKS[:3]:
        print("example", c)
    for c in [c for c in CHECKS if c["state"] != "hit"][:3]:
        print("miss example", c)


CHECKS: list[dict] = []


def hook_autotune_checks() -> None:
    """Record every autotune-cache lookup: which path asked, its state, and whether a .best_config file for that
    kernel exists and carries the same configs_hash."""
    import json

    from torch._inductor.runtime import triton_heuristics

    original = triton_heuristics.check_autotune_cache
    via = ["cached_autotune"]

    def check(configs, filename, inductor_meta, *args, **kwargs):
        result = original(configs, filename, inductor_meta, *args, **kwargs)
        entry = {"via": via[0], "state": result[2].get("autotune_cache_state"), "n_configs": len(configs)}
        entry["file_exists"] = entry["hash_match"] = None
        try:
            cache = result[1]
            local = getattr(cache, "local_cache", None) if cache is not None else None
            path = local[1] if local else None
            entry["cache_key_path"] = path
            if filename is not None:
                ours = triton_heuristics.hash_configs(configs)
                entry["filename"] = filename
                entry["file_exists"] = bool(path) and os.path.exists(path)
                if entry["file_exists"]:
                    saved = json.load(open(path))
                    entry["hash_match"] = saved.get("configs_hash") == ours
                    entry["saved"] = {k: v for k, v in saved.items() if k != "configs_hash"}
                    entry["ours_configs"] = [str(c) for c in configs][:4]
                else:
                    folder = os.path.dirname(filename)
                    entry["siblings"] = [f for f in os.listdir(folder) if f.endswith(".best_config")][:3]
        except Exception as error:  # a diagnostic: never break the run
            entry["hook_error"] = repr(error)
        CHECKS.append(entry)
        return result

    triton_heuristics.check_autotune_cache = check
    recheck = getattr(triton_heuristics.CachingAutotuner, "recheck_autotune_cache", None)
    if recheck is not None:

        def recheck_hooked(self, *args, **kwargs):
            via[0] = "recheck"
            try:
                return recheck(self, *args, **kwargs)
            finally:
                via[0] = "cached_autotune"

        triton_heuristics.CachingAutotuner.recheck_autotune_cache = recheck_hooked
    print("hooked; recheck_autotune_cache exists:", recheck is not None)


if __name__ == "__main__":
    main(sys.argv[1])
