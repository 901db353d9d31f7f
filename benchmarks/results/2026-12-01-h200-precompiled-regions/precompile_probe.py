"""Probe: torch's precompile API for Flux's repeated blocks, with weights as inputs.

Question: a warm replica spends ~18 s in Dynamo tracing the regionally compiled blocks even with a warm
Inductor cache. Does `torch.compile(fn, fullgraph=True).aot_compile(...)`, saved with
`save_compiled_function` and loaded in a fresh process with `torch.compiler.load_compiled_function`,
remove that tracing, and run as fast as `torch.compile`?

One artifact per block class and shape serves every block of the class: the compiled function is
`block_fn(params, hidden, encoder, temb, cos, sin)`, which calls the block through
`torch.func.functional_call`. The block it closes over is a *template* built on the meta device: it holds
no weights, so no weight can be captured, aliased or guarded on, and it is handed to save and load as
`external_data` (newer torch refuses to pickle an nn.Module and asks for it that way; older versions,
without `external_data`, pickle the empty template: a few KB).

Guards: Dynamo cannot serialize some guard types (ID_MATCH, CLOSURE_MATCH, ...), and aot_compile's default
filter misses them when they are *derived* types; `--guards serializable` (default) drops those and guards
on globals, keeping the tensor, shape and module-structure guards; `--guards none` keeps none (as vLLM).
If aot_compile or saving fails, the artifact is tried once more with `--guards none`.

From the repo root, `PYTHONPATH=. python benchmarks/results/2026-12-01-h200-precompiled-regions/precompile_probe.py`:

    save --device cpu --size tiny --dtype fp32 --dir D   # compile, save artifacts, inputs and eager outputs
    load --dir D                                          # fresh process: load, check, time

Both subcommands share one Inductor cache (D/inductor-cache unless TORCHINDUCTOR_CACHE_DIR is set), as a
replica's warm start does; `load --fresh-cache` uses an empty one instead, to show what an artifact needs.
"""

import os
import time

T_START = time.perf_counter()
# Read before torch is imported: importing it may already set this variable to Inductor's default.
ENV_CACHE_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")

import argparse  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from diffusers.models.transformers.transformer_flux import (  # noqa: E402
    FluxSingleTransformerBlock,
    FluxTransformerBlock,
)

from deployments.engines.random_models import _seeded_init  # noqa: E402  (run from the repo root, PYTHONPATH=.)

T_IMPORTS = time.perf_counter() - T_START
REPO = Path(__file__).resolve().parents[3]
FLUX_SCHNELL_TRANSFORMER = REPO / "deployments" / "engines" / "flux_schnell" / "transformer" / "config.json"
BLOCK_CLASSES = {"double": FluxTransformerBlock, "single": FluxSingleTransformerBlock}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# tiny: the dimensions of random_models.tiny_flux_pipeline's transformer; full: FLUX.1-schnell's config.
TINY = {"heads": 2, "head_dim": 16, "txt": 16, "imgs": [64, 256]}
FULL_TXT, FULL_IMGS = 256, [1024, 4096]  # 256 T5 tokens; 512x512 and 1024x1024 images
SEED_A, SEED_B = 0, 1  # block A's weights are traced with; block B checks one artifact serves other weights
# Guard types Dynamo cannot serialize (CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES).
UNSERIALIZABLE_GUARDS = (
    "DICT_VERSION",
    "NN_MODULE",
    "ID_MATCH",
    "FUNCTION_MATCH",
    "CLASS_MATCH",
    "MODULE_MATCH",
    "CLOSURE_MATCH",
    "WEAKREF_ALIVE",
)
GUARD_STATS: dict[str, int] = {}


def log(message: str) -> None:
    print(f"[{time.perf_counter() - T_START:7.1f}s] {message}", flush=True)


def report_failure(step: str, error: BaseException) -> None:
    lines = (str(error) or repr(error)).strip().splitlines()
    log(f"FAILED {step}: {type(error).__module__}.{type(error).__name__}: {lines[0] if lines else ''}")
    for line in lines[1:6]:
        print(f"      | {line[:300]}", flush=True)
    for frame in traceback.extract_tb(error.__traceback__)[-3:]:
        print(f"      at {frame.filename}:{frame.lineno} in {frame.name}", flush=True)


def attempt(step: str, fn, *args, **kwargs) -> tuple[bool, object]:
    """Run one step; on an exception print which step failed and how, and let the caller go on."""
    try:
        return True, fn(*args, **kwargs)
    except Exception as error:
        report_failure(step, error)
        return False, None


def configure_torch() -> None:
    """The settings precompile needs: the API switched on (off by default in older releases), caches on."""
    if hasattr(torch._dynamo.config, "enable_aot_compile"):
        torch._dynamo.config.enable_aot_compile = True
    torch._inductor.config.force_disable_caches = False  # aot_compile refuses to run without caches
    torch._inductor.config.fx_graph_cache = True


def use_cache_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)  # read by Inductor whenever it compiles or loads


def dims_for(size: str) -> dict:
    if size == "tiny":
        return dict(TINY)
    config = json.loads(FLUX_SCHNELL_TRANSFORMER.read_text())
    return {
        "heads": config["num_attention_heads"],
        "head_dim": config["attention_head_dim"],
        "txt": FULL_TXT,
        "imgs": list(FULL_IMGS),
    }


def build_block(kind: str, dims: dict, seed: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    dim = dims["heads"] * dims["head_dim"]
    with _seeded_init(seed, device, dtype):
        block = BLOCK_CLASSES[kind](dim=dim, num_attention_heads=dims["heads"], attention_head_dim=dims["head_dim"])
    return block.eval().requires_grad_(False)


def weights(block: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(block.named_parameters()), **dict(block.named_buffers())}


def fingerprint(block: torch.nn.Module) -> float:
    return float(sum(t.double().sum().item() for t in weights(block).values()))


def block_function(template: torch.nn.Module):
    """`block_fn(params, ...)` runs `template`'s code with `params`: weights are inputs of the graph."""

    def block_fn(params, hidden, encoder, temb, cos, sin):
        return torch.func.functional_call(template, params, (hidden, encoder, temb, (cos, sin)))

    return block_fn


def make_inputs(dims: dict, batch: int, img: int, device: torch.device, dtype: torch.dtype, seed: int):
    dim = dims["heads"] * dims["head_dim"]
    txt, head_dim = dims["txt"], dims["head_dim"]
    g = torch.Generator(device).manual_seed(seed)

    def r(*shape, dt=dtype):
        return torch.randn(*shape, generator=g, device=device, dtype=dt)

    # hidden, encoder_hidden_states, temb, and the rotary cos/sin (fp32, as FluxPosEmbed makes them)
    return (
        r(batch, img, dim),
        r(batch, txt, dim),
        r(batch, dim),
        r(txt + img, head_dim, dt=torch.float32),
        r(txt + img, head_dim, dt=torch.float32),
    )


def serializable_guards(entries) -> list[bool]:
    """Keep what can be saved: drop guards on globals and ones whose type (or a derived type) Dynamo cannot
    serialize. aot_compile's default filter misses derived types (e.g. a CONSTANT_MATCH built on ID_MATCH)
    and then fails with 'ID_MATCH guard cannot be serialized'."""
    unsupported = set(
        getattr(
            getattr(torch._dynamo.guards, "CheckFunctionManager", None),
            "UNSUPPORTED_SERIALIZATION_GUARD_TYPES",
            UNSERIALIZABLE_GUARDS,
        )
    )
    keep = []
    for entry in entries:
        derived = set(getattr(entry, "derived_guard_types", ()) or ())
        keep.append(not entry.is_global and entry.guard_type not in unsupported and not (derived & unsupported))
    GUARD_STATS.update(kept=sum(keep), total=len(keep))
    return keep


def no_guards(entries) -> list[bool]:
    """What vLLM does: no guard at all; the caller promises the shapes, dtypes and devices."""
    GUARD_STATS.update(kept=0, total=len(entries))
    return [False] * len(entries)


GUARD_FILTERS = {"serializable": serializable_guards, "none": no_guards}


def accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def save_artifact(aot, path: Path, external_data: dict) -> str:
    """Handles both forms: save_compiled_function(path, external_data=...) and the older (path)."""
    if accepts(aot.save_compiled_function, "external_data"):
        aot.save_compiled_function(str(path), external_data=external_data)
        return "external_data"
    aot.save_compiled_function(str(path))
    return "pickled template (no external_data in this torch)"


def load_artifact(path: Path, external_data: dict):
    with open(path, "rb") as f:
        if accepts(torch.compiler.load_compiled_function, "external_data"):
            return torch.compiler.load_compiled_function(f, external_data=external_data)
        return torch.compiler.load_compiled_function(f)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def call_block(block: torch.nn.Module, hidden, encoder, temb, cos, sin):
    return block(hidden, encoder, temb, (cos, sin))


def timed_once(device: torch.device, fn, *args) -> tuple[float, object]:
    sync(device)
    t = time.perf_counter()
    out = fn(*args)
    sync(device)
    return time.perf_counter() - t, out


def ms_per_call(device: torch.device, iters: int, fn, *args) -> float:
    fn(*args)
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn(*args)
    sync(device)
    return (time.perf_counter() - t) / iters * 1000


def max_diff(got, ref) -> str:
    abs_err = max((a.float() - b.float()).abs().max().item() for a, b in zip(got, ref, strict=True))
    rel_err = max(
        (a.float() - b.float()).abs().max().item() / (b.float().abs().max().item() + 1e-12)
        for a, b in zip(got, ref, strict=True)
    )
    return f"max abs {abs_err:.2e}, rel {rel_err:.2e}"


def cache_counters() -> dict[str, int]:
    counters = torch._dynamo.utils.counters
    return {
        f"{group}.{key}": value
        for group in ("inductor", "aot_autograd")
        for key, value in counters[group].items()
        if "cache" in key
    }


def first_compiled_call(step: str, device: torch.device, compiled, *args) -> tuple[bool, object]:
    """Time a torch.compile'd function's first call (Dynamo trace + Inductor) and what its caches did."""
    before = cache_counters()
    with torch.no_grad():
        ok, res = attempt(step, timed_once, device, compiled, *args)
    if not ok:
        return False, None
    delta = {k: v - before.get(k, 0) for k, v in cache_counters().items() if v != before.get(k, 0)}
    cache = ", ".join(f"{k.split('.')[1]} {v}" for k, v in sorted(delta.items())) or "no cache counter moved"
    return True, (res[0], res[1], cache)


def artifact_name(kind: str, batch: int, img: int) -> str:
    return f"{kind}-b{batch}-img{img}"


def fmt_mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.2f} MB"


def env_summary(device: torch.device) -> str:
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"torch {torch.__version__}, python {sys.version.split()[0]}, {device}{gpu}, imports {T_IMPORTS:.1f} s"


def cmd_save(args: argparse.Namespace) -> int:
    out_dir = Path(args.dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    use_cache_dir(Path(ENV_CACHE_DIR) if ENV_CACHE_DIR else out_dir / "inductor-cache")
    configure_torch()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    dims = dims_for(args.size)
    if args.img:
        dims["imgs"] = args.img
    log(f"save: {env_summary(device)}; {args.size} {args.dtype} blocks {dims}, batch {args.batch}")
    log(f"inductor cache {os.environ['TORCHINDUCTOR_CACHE_DIR']}, guards {args.guards}")
    meta = {
        "size": args.size,
        "device": args.device,
        "dtype": args.dtype,
        "dims": dims,
        "batch": args.batch,
        "guards": args.guards,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "fingerprints": {},
        "artifacts": [],
    }
    failures = 0
    for kind in args.kinds:
        t = time.perf_counter()
        template = build_block(kind, dims, SEED_A, torch.device("meta"), dtype)
        block_a = build_block(kind, dims, SEED_A, device, dtype)
        block_b = build_block(kind, dims, SEED_B, device, dtype)
        meta["fingerprints"][kind] = [fingerprint(block_a), fingerprint(block_b)]
        n_params = sum(p.numel() for p in block_a.parameters())
        log(
            f"{kind}: built template (meta) and blocks A, B ({n_params:,} params each) "
            f"in {time.perf_counter() - t:.1f} s"
        )
        fn = block_function(template)
        compiled_fn = torch.compile(fn, fullgraph=True, dynamic=False)  # the usual way, for comparison
        for img in dims["imgs"]:
            name = artifact_name(kind, args.batch, img)
            x = make_inputs(dims, args.batch, img, device, dtype, seed=img)
            with torch.no_grad():
                ref_a, ref_b = fn(weights(block_a), *x), fn(weights(block_b), *x)
            torch.save({"inputs": x, "ref_a": ref_a, "ref_b": ref_b}, out_dir / f"{name}.io.pt")
            row = {"kind": kind, "img": img, "batch": args.batch, "file": f"{name}.aot", "io": f"{name}.io.pt"}
            aot = None
            for mode in dict.fromkeys([args.guards, "none"]):  # if it fails, once more without any guard
                options = {"guard_filter_fn": GUARD_FILTERS[mode]}
                compiled = torch.compile(fn, fullgraph=True, dynamic=False, options=options)
                if not hasattr(compiled, "aot_compile"):
                    log(f"FAILED {name}: torch.compile(...) has no .aot_compile in torch {torch.__version__}")
                    return 1
                log(f"{name}: aot_compile (Dynamo trace + Inductor compile), guards {mode} ...")
                GUARD_STATS.clear()
                t = time.perf_counter()
                with torch.no_grad():
                    ok, aot = attempt(f"{name} aot_compile", compiled.aot_compile, ((weights(block_a), *x), {}))
                if ok:
                    row["compile_s"], row["guards"] = time.perf_counter() - t, mode
                    row["guards_kept"] = f"{GUARD_STATS.get('kept', '?')}/{GUARD_STATS.get('total', '?')}"
                    t = time.perf_counter()
                    path = out_dir / row["file"]
                    external = {"template": template}
                    ok, how = attempt(f"{name} save_compiled_function", save_artifact, aot, path, external)
                if ok:
                    break
                failures, aot = failures + 1, None
            if aot is None:
                continue
            row["save_s"], row["bytes"], row["saved_with"] = time.perf_counter() - t, path.stat().st_size, how
            log(
                f"{name}: compiled in {row['compile_s']:.1f} s (guards kept {row['guards_kept']}), "
                f"saved in {row['save_s']:.2f} s, {fmt_mb(row['bytes'])} ({how})"
                + (
                    " [retried without guards: Inductor's part came from the cache]"
                    if row["guards"] != args.guards
                    else ""
                )
            )
            with torch.no_grad():
                ok, res = attempt(f"{name} in-process call", timed_once, device, aot, weights(block_b), *x)
            if ok:
                log(
                    f"{name}: in-process first call {res[0] * 1000:.1f} ms; block B vs eager: {max_diff(res[1], ref_b)}"
                )
            if args.warm_torch_compile:  # fills the FX graph cache that load's torch.compile reads, as a warm start
                ok, res = first_compiled_call(f"{name} torch.compile", device, compiled_fn, weights(block_a), *x)
                if ok:
                    row["torch_compile_first_call_s"] = res[0]
                    log(f"{name}: torch.compile first call {res[0]:.1f} s ({res[2]}), after aot_compile")
            meta["artifacts"].append(row)
            (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))  # loadable even if cut short
        del block_a, block_b
        if device.type == "cuda":
            torch.cuda.empty_cache()
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    total = sum(r["compile_s"] for r in meta["artifacts"])
    log(f"save done: {len(meta['artifacts'])} artifacts, aot_compile total {total:.1f} s, {failures} failures")
    return 1 if failures else 0


def cmd_load(args: argparse.Namespace) -> int:
    out_dir = Path(args.dir).resolve()
    meta = json.loads((out_dir / "meta.json").read_text())
    if args.fresh_cache:
        use_cache_dir(Path(tempfile.mkdtemp(prefix="inductor-cache-fresh-", dir=out_dir)))
    else:
        use_cache_dir(Path(ENV_CACHE_DIR) if ENV_CACHE_DIR else out_dir / "inductor-cache")
    configure_torch()
    device, dtype = torch.device(meta["device"]), DTYPES[meta["dtype"]]
    dims, guards = meta["dims"], meta["guards"]
    iters = args.iters or (20 if device.type == "cuda" else 5)
    log(f"load: {env_summary(device)}; artifacts from torch {meta['torch']}, python {meta['python']}")
    log(f"inductor cache {os.environ['TORCHINDUCTOR_CACHE_DIR']}{' (fresh, empty)' if args.fresh_cache else ''}")
    if meta["torch"] != torch.__version__:
        log("CAUTION: saved with another torch version: load_compiled_function will refuse it")
    failures = 0
    kinds = sorted({r["kind"] for r in meta["artifacts"]}, key=list(BLOCK_CLASSES).index)
    templates, blocks = {}, {}
    for kind in kinds:
        t = time.perf_counter()
        templates[kind] = build_block(kind, dims, SEED_A, torch.device("meta"), dtype)
        blocks[kind] = [build_block(kind, dims, s, device, dtype) for s in (SEED_A, SEED_B)]
        same = [fingerprint(b) for b in blocks[kind]] == meta["fingerprints"][kind]
        log(f"{kind}: built template and blocks A, B in {time.perf_counter() - t:.1f} s; weights as saved: {same}")

    # 1. Load every artifact first, before anything else compiles in this process.
    loaded = {}
    for row in meta["artifacts"]:
        name = Path(row["file"]).stem
        t = time.perf_counter()
        ok, fn = attempt(
            f"{name} load_compiled_function", load_artifact, out_dir / row["file"], {"template": templates[row["kind"]]}
        )
        if ok:
            loaded[name] = fn
            log(
                f"{name}: loaded in {time.perf_counter() - t:.3f} s "
                f"({fmt_mb(row['bytes'])}; its aot_compile took {row['compile_s']:.1f} s)"
            )
        else:
            failures += 1
    log(f"all artifacts loaded: {len(loaded)}/{len(meta['artifacts'])}")

    # 2. Call them: first call, correctness for the traced weights (A) and other weights (B), guards.
    ios = {}
    for row in meta["artifacts"]:
        name = Path(row["file"]).stem
        ios[name] = io = torch.load(out_dir / row["io"], map_location=device)
        if name not in loaded:
            continue
        x, (block_a, block_b) = io["inputs"], blocks[row["kind"]]
        with torch.no_grad():
            ok, res = attempt(f"{name} first call", timed_once, device, loaded[name], weights(block_a), *x)
            if not ok:
                failures += 1
                continue
            eager_a, eager_b = call_block(block_a, *x), call_block(block_b, *x)
            ok_b, got_b = attempt(f"{name} call with block B's weights", loaded[name], weights(block_b), *x)
        log(f"{name}: first call {res[0] * 1000:.1f} ms")
        log(f"  weights A vs eager now: {max_diff(res[1], eager_a)}; vs eager at save: {max_diff(res[1], io['ref_a'])}")
        if ok_b:
            log(
                f"  weights B vs eager now: {max_diff(got_b, eager_b)}; "
                f"eager B now vs at save: {max_diff(eager_b, io['ref_b'])}"
            )
        else:
            failures += 1
        others = [r for r in meta["artifacts"] if r["kind"] == row["kind"] and r["img"] != row["img"]]
        # A call at another shape must be refused by the guards (with no guards it would run unchecked: skip).
        if others and row.get("guards", guards) != "none":
            wrong = torch.load(out_dir / others[0]["io"], map_location=device)["inputs"]
            try:
                with torch.no_grad():
                    loaded[name](weights(block_a), *wrong)
                log(f"  guard check: wrong shape (img {others[0]['img']}) was NOT rejected")
            except RuntimeError as error:
                log(f"  guard check: wrong shape (img {others[0]['img']}) rejected: {str(error).splitlines()[0][:160]}")

    # 3. The same functions under a normal torch.compile: first call = Dynamo trace + Inductor (cache hit or not).
    compiled_fns = {}
    for row in meta["artifacts"] if args.torch_compile else []:
        name, kind = Path(row["file"]).stem, row["kind"]
        if kind not in compiled_fns:
            compiled_fns[kind] = torch.compile(block_function(templates[kind]), fullgraph=True, dynamic=False)
        x, block_a = ios[name]["inputs"], blocks[kind][0]
        ok, res = first_compiled_call(f"{name} torch.compile", device, compiled_fns[kind], weights(block_a), *x)
        if not ok:
            failures += 1
            continue
        log(
            f"{name}: torch.compile first call {res[0]:.2f} s ({res[2]}); "
            f"vs eager at save: {max_diff(res[1], ios[name]['ref_a'])}"
        )

    # 4. Per-call times, after warm-up.
    for row in meta["artifacts"]:
        name, kind = Path(row["file"]).stem, row["kind"]
        x, block_a = ios[name]["inputs"], blocks[kind][0]
        w = weights(block_a)
        variants = {"eager": (call_block, block_a)}
        if name in loaded:
            variants["precompiled"] = (loaded[name], w)
        if kind in compiled_fns:
            variants["torch.compile"] = (compiled_fns[kind], w)
        if name in loaded and row.get("guards", guards) != "none":
            variants["precompiled, guard check off"] = (loaded[name], w)
        times = {}
        with torch.no_grad():
            for label, (fn, first) in variants.items():
                if label.endswith("guard check off"):
                    loaded[name].disable_guard_check()
                ok, ms = attempt(f"{name} timing {label}", ms_per_call, device, iters, fn, first, *x)
                if ok:
                    times[label] = ms
        log(f"{name}: ms/call over {iters}: " + ", ".join(f"{k} {v:.3f}" for k, v in times.items()))
    log(f"load done: {failures} failures")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    save = sub.add_parser("save", help="aot_compile the blocks and save artifacts, inputs and eager outputs")
    save.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    save.add_argument("--size", choices=["tiny", "full"], default="tiny")
    save.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    save.add_argument("--dir", required=True)
    save.add_argument("--batch", type=int, default=1)
    save.add_argument(
        "--img", type=int, nargs="+", help="image sequence lengths (default: tiny 64 256, full 1024 4096)"
    )
    save.add_argument("--kinds", nargs="+", choices=list(BLOCK_CLASSES), default=list(BLOCK_CLASSES))
    save.add_argument("--guards", choices=list(GUARD_FILTERS), default="serializable")
    save.add_argument(
        "--no-warm-torch-compile",
        dest="warm_torch_compile",
        action="store_false",
        help="skip the usual torch.compile after each aot_compile (it warms the cache for load's comparison)",
    )
    load = sub.add_parser("load", help="in a fresh process: load the artifacts, check and time them")
    load.add_argument("--dir", required=True)
    load.add_argument("--fresh-cache", action="store_true", help="an empty Inductor cache instead of save's")
    load.add_argument("--iters", type=int, default=0, help="calls per timing (default: cuda 20, cpu 5)")
    load.add_argument(
        "--no-torch-compile", dest="torch_compile", action="store_false", help="skip the torch.compile comparison"
    )
    args = parser.parse_args()
    return cmd_save(args) if args.command == "save" else cmd_load(args)


if __name__ == "__main__":
    sys.exit(main())
