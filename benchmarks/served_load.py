"""Served end-to-end load on one GPU: HTTP requests against the real application, against plain diffusers.

    python -m benchmarks.served_load [--out served_load.json] [--concurrency 1 2 4 8 16]
    python -m benchmarks.served_load --size 1024x1024 --output-format jpeg                     # another request
    python -m benchmarks.served_load --flux '{"random_weights": "full", "precision": "bf16"}'   # another engine mode
    python -m benchmarks.served_load --rehearse --concurrency 1 2 --requests-per-level 4      # CPU, tiny models

In one process, on one card, for requests of one `--size` (default 512x512) and `--output-format`
(default png):
  1. Baseline: the full-size FLUX.1-schnell architecture with seeded random bf16 weights in plain
     diffusers `FluxPipeline`, eager, batch 1, at that size, 4 steps, guidance 0, T5 length 256: P50
     and the batch-1 rate 1/P50. The pipeline is then freed so the card is Serve's.
  2. Ray starts in this process (no dashboard) and the application is deployed from
     `configs/gpu-80gb.yaml` the way `serve run CONFIG` deploys it (`deployments.app:build_app` with the
     YAML's `args:` and per-deployment options), adapted: proxy on 127.0.0.1, no API keys, one
     attempt per image, CLIP models with random weights of the real architectures and a calibration
     that accepts every image (no distractors, no policy concepts), one generator replica (0.8 GPU,
     no autoscaling), the verifier on 0.1 GPU, no `vram_gb` resources, request batching up to 8, and
     the one size offered (warmed up at every batch size). So every request is exactly one
     generation, one dual-CLIP verification and one encoding in the asked format.
     The flux block is `--flux` (default: fp8, fused QKV, regional compile, CUDA graphs).
  3. Closed-loop HTTP load on `POST /v1/images/generations` (one image, 4 steps), distinct prompts
     and seeds, at each concurrency: a warm-up round of `concurrency` requests (untimed), then up to
     `--requests-per-level` requests, none started after `--level-timeout-s`. Per level: ok and
     failed requests (by status), P50 and P99 latency of the successful ones, images/s (images
     returned / level wall time), the mean answer size and the generator's batch sizes.
It prints a table naming the card and versions, the ratios against the size's targets (512x512:
served P50 at concurrency 1 <= 0.25 s and saturation >= 3x the diffusers batch-1 rate; 1024x1024:
<= 0.40 s and >= 2.5x) and writes JSON. Encoding time per format and size, measured alone, is
`benchmarks.sizes`'s; here a format's cost shows in the P50 against a png run.
`--rehearse` tries the script without a GPU: tiny models on the CPU as `configs/local.yaml` has
them, one Ingress replica, 2 logical GPUs, no diffusers baseline; its numbers mean nothing. Called
as `main(argv)` in a process that has started Ray already (a test session), it uses that Ray.
"""

import argparse
import asyncio
import gc
import json
import os
import socket
import statistics
import sys
import time
from collections import Counter
from functools import partial

import aiohttp
import yaml

from benchmarks.common import (
    REPO,
    STEPS,
    app_args,
    card_name,
    diffusers_runner,
    percentile,
    prompt,
    random_weight_verifier,
    timed,
    versions,
)
from deployments.config import width_height
from deployments.vram import GIB

APP_CONFIG = REPO / "configs/gpu-80gb.yaml"
CPU_CONFIG = "configs/local.yaml"
GENERATIONS = "/v1/images/generations"
GPU_FLUX = {"random_weights": "full", "precision": "fp8", "fuse_qkv": True, "compile": "regional"}
# Per size: served P50 at concurrency 1 (s), saturation throughput over the diffusers batch-1 rate (issues 7, 15).
TARGETS = {"512x512": (0.25, 3.0), "1024x1024": (0.40, 2.5)}


def diffusers_baseline(calls: int, size: str) -> dict:
    """Plain diffusers eager bf16 batch-1 latency at `size` on this card, measured before Serve takes it."""
    import torch

    from deployments.engines.random_models import full_size_flux_pipeline

    start = time.perf_counter()
    pipe = full_size_flux_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    build_s = time.perf_counter() - start
    run = diffusers_runner(pipe, *width_height(size))

    torch.cuda.reset_peak_memory_stats()
    for _ in range(3):  # cuBLAS/cuDNN warm-up; the first calls after a build run up to twice as long
        run([prompt(0)], [0])
    seconds = [timed(partial(run, [prompt(index)], [index]), 1)[0] for index in range(1, calls + 1)]
    peak_gib = torch.cuda.max_memory_allocated() / GIB
    del pipe, run  # the card must be free for the generator replica (the runner holds the pipeline too)
    gc.collect()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    p50 = statistics.median(seconds)
    result = {
        "mode": "diffusers FluxPipeline eager bf16, batch 1",
        "build_s": build_s,
        "seconds": seconds,
        "p50": p50,
        "p99": percentile(seconds, 99),
        "images_per_s": 1 / p50,
        "peak_allocated_gib": peak_gib,
        "gpu_free_after_gib": free / GIB,
        "gpu_total_gib": total / GIB,
    }
    print("baseline:", json.dumps(result), flush=True)
    return result


def served_config(rehearse: bool, flux: dict | None, port: int, max_batch_size: int, size: str) -> dict:
    """configs/gpu-80gb.yaml, adapted so each request is one generation + verification + encoding on one card,
    offering `size` alone."""
    config = yaml.safe_load(APP_CONFIG.read_text())
    config["proxy_location"] = "HeadOnly"
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    app = config["applications"][0]
    args = app["args"]
    if rehearse:  # the CPU profile's tiny models, exactly as configs/local.yaml has them
        cpu_args = app_args(CPU_CONFIG)
        args["flux"] = cpu_args["flux"]
        args["verifier"] = cpu_args["verifier"]
    if flux is not None or not rehearse:
        # One size, the load's: one CUDA graph per batch size, captured at start.
        args["flux"] = flux if flux is not None else {**GPU_FLUX, "cuda_graphs": max_batch_size}
    args["limits"] = {**args.get("limits", {}), "sizes": [size]}
    args["verifier"] = random_weight_verifier(args.get("verifier", {}))
    args["serving"] = {**args.get("serving", {}), "max_attempts": 1, "auth": {"disabled": True}}
    batching = args.setdefault("batching", {})
    batching["generator"] = {**batching.get("generator", {}), "max_batch_size": max_batch_size}

    options = {deployment["name"]: deployment for deployment in app["deployments"]}
    if rehearse:
        options["Ingress"]["num_replicas"] = 1  # each replica process costs a 2-core machine seconds of imports
    generator = options["FluxGenerator"]
    generator.pop("autoscaling_config", None)  # one replica: the load measures it, not the autoscaler
    generator["num_replicas"] = 1
    # Twice a batch: the next batch queues in the replica while one runs, so the GPU never waits for routing.
    generator["max_ongoing_requests"] = max(generator.get("max_ongoing_requests", 0), 2 * max_batch_size)
    for name, gpus in (("FluxGenerator", 0.8), ("ClipVerifier", 0.1)):
        actor = options[name].setdefault("ray_actor_options", {})
        actor.pop("resources", None)  # no `vram_gb`: this Ray node does not advertise it
        actor["num_gpus"] = gpus
    return config


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def deploy(config: dict) -> None:
    """What `serve run CONFIG` does (ray/serve/scripts.py): start Serve with the config's HTTP options,
    then let the controller build the application from its import path, args and deployment options."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location)
    client.deploy_apps(schema)


def wait_running(app_name: str, url: str, timeout_s: float) -> None:
    """Until the application is RUNNING and its proxy answers; the generator loads and compiles meanwhile."""
    import urllib.error
    import urllib.request

    from ray import serve
    from ray.serve.schema import ApplicationStatus

    start = time.monotonic()
    last_report = start
    while time.monotonic() - start < timeout_s:
        status = serve.status().applications.get(app_name)
        if status is not None and status.status == ApplicationStatus.DEPLOY_FAILED:
            details = "; ".join(f"{name}: {d.status} {d.message}" for name, d in status.deployments.items())
            raise RuntimeError(f"{app_name} failed to deploy: {status.message} ({details})")
        if status is not None and status.status == ApplicationStatus.RUNNING:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # the proxy is not routing to the app yet
        if time.monotonic() - last_report > 30:
            last_report = time.monotonic()
            states = {name: str(d.status) for name, d in status.deployments.items()} if status else {}
            print(f"  {time.monotonic() - start:.0f} s: {status.status if status else 'no app yet'} {states}")
        time.sleep(1)
    raise TimeoutError(f"{app_name} did not reach RUNNING within {timeout_s} s")


async def one_request(session: aiohttp.ClientSession, url: str, index: int, timeout_s: float, fields: dict) -> dict:
    """One README-style generation with `fields` (size, output_format); the latency includes reading the body."""
    body = {"prompt": prompt(index), "seed": index, "n": 1, "num_inference_steps": STEPS, **fields}
    start = time.perf_counter()
    images = 0
    payload = b""
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            payload = await response.read()
            status: int | str = response.status
        if status == 200:
            images = len(json.loads(payload)["data"])
    except TimeoutError:
        status = "client timeout"
    except aiohttp.ClientError as error:
        status = type(error).__name__
    return {"seconds": time.perf_counter() - start, "status": status, "images": images, "bytes": len(payload)}


async def burst(
    url: str, concurrency: int, requests: int, first_index: int, args: argparse.Namespace
) -> tuple[list[dict], float]:
    """`concurrency` closed-loop clients share `requests`; none starts a request after the deadline."""
    results: list[dict] = []
    issued = 0
    start = time.perf_counter()
    deadline = start + args.level_timeout_s
    fields = {"size": args.size, "output_format": args.output_format}

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal issued
        while issued < requests and time.perf_counter() < deadline:
            index = first_index + issued
            issued += 1  # no await since the check: the event loop runs one client at a time
            results.append(await one_request(session, url, index, args.request_timeout_s, fields))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return results, time.perf_counter() - start


def batch_histogram(app_name: str) -> Counter[int] | None:
    """Requests per generator batch since the replica started; None if the deployment does not say."""
    from ray import serve

    try:
        handle = serve.get_deployment_handle("FluxGenerator", app_name)
        histogram = handle.batch_histogram.remote().result(timeout_s=30)
        return Counter({int(size): count for size, count in histogram.items()})
    except Exception as error:  # a renamed method must not cost the measurements
        print(f"no batch histogram: {type(error).__name__}: {error}", flush=True)
        return None


def run_level(url: str, app_name: str, concurrency: int, requests: int, first_index: int, args) -> dict:
    """A warm-up round, then the timed load of one concurrency level."""
    warmup, warmup_s = asyncio.run(burst(url, concurrency, concurrency, first_index, args))
    before = batch_histogram(app_name)
    results, wall_s = asyncio.run(burst(url, concurrency, requests, first_index + concurrency, args))
    after = batch_histogram(app_name)
    ok = [r["seconds"] for r in results if r["status"] == 200]
    images = sum(r["images"] for r in results)
    batches = dict(sorted((after - before).items())) if before is not None and after is not None else None
    level = {
        "concurrency": concurrency,
        "requests": len(results),
        "ok": len(ok),
        "failed": dict(Counter(str(r["status"]) for r in results if r["status"] != 200)),
        "p50": statistics.median(ok) if ok else None,
        "p99": percentile(ok, 99) if ok else None,
        "images": images,
        "wall_s": wall_s,
        "images_per_s": images / wall_s,
        "mean_response_kib": statistics.mean(r["bytes"] for r in results if r["status"] == 200) / 1024 if ok else None,
        "batch_histogram": batches,
        "mean_batch": sum(s * n for s, n in batches.items()) / sum(batches.values()) if batches else None,
        "warmup_s": warmup_s,
        "warmup_failed": dict(Counter(str(r["status"]) for r in warmup if r["status"] != 200)),
        "latencies": [r["seconds"] for r in results],
    }
    print("level:", json.dumps({k: v for k, v in level.items() if k != "latencies"}), flush=True)
    return level


def seconds_or_dash(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def report(
    card: str, found: dict, baseline: dict | None, startup_s: float, levels: list[dict], args, flux: dict
) -> dict:
    """The table and the ratios against the size's targets (`TARGETS`); returns the ratios for the JSON."""
    request = f"{args.size}, {STEPS} steps, 1 image per request as {args.output_format}"
    print(f"\nserved FLUX.1-schnell, {request}, HTTP; flux {json.dumps(flux)}")
    print(f"card: {card}; {found}; startup {startup_s:.0f} s")
    if baseline:
        print(
            f"baseline diffusers eager bf16 batch 1 at {args.size}: P50 {baseline['p50']:.3f} s, "
            f"{baseline['images_per_s']:.2f} img/s ({len(baseline['seconds'])} calls)"
        )
    print(
        f"\n{'conc':>5}{'reqs':>6}{'ok':>5}  {'failed':<16}{'P50 s':>8}{'P99 s':>8}{'img/s':>8}{'KiB':>7}{'batch':>7}"
        "  batches"
    )
    for level in levels:
        failed = ",".join(f"{status}x{n}" for status, n in level["failed"].items()) or "-"
        mean_batch = f"{level['mean_batch']:.2f}" if level["mean_batch"] else "-"
        kib = f"{level['mean_response_kib']:.0f}" if level["mean_response_kib"] else "-"
        print(
            f"{level['concurrency']:>5}{level['requests']:>6}{level['ok']:>5}  {failed:<16}"
            f"{seconds_or_dash(level['p50']):>8}{seconds_or_dash(level['p99']):>8}{level['images_per_s']:>8.2f}"
            f"{kib:>7}{mean_batch:>7}  {level['batch_histogram'] if level['batch_histogram'] is not None else '-'}"
        )

    target_p50_s, target_throughput_x = TARGETS.get(args.size, (None, None))
    ratios: dict = {"target_p50_s": target_p50_s, "target_throughput_x": target_throughput_x}
    single = next((level for level in levels if level["concurrency"] == 1 and level["p50"] is not None), None)
    print()
    if single:
        line = f"served P50 at concurrency 1: {single['p50']:.3f} s"
        ratios["served_p50_c1"] = single["p50"]
        if target_p50_s is not None:
            ratios["p50_target_met"] = single["p50"] <= target_p50_s
            line += f" (target <= {target_p50_s} s: {'met' if ratios['p50_target_met'] else 'NOT met'})"
        if baseline:
            ratios["served_p50_c1_over_diffusers_p50"] = single["p50"] / baseline["p50"]
            line += f"; x{ratios['served_p50_c1_over_diffusers_p50']:.2f} the diffusers batch-1 P50"
        print(line)
    else:
        print("served P50 at concurrency 1: not measured")
    best = max(levels, key=lambda level: level["images_per_s"], default=None)
    if best and best["images_per_s"] > 0:
        ratios.update(saturation_images_per_s=best["images_per_s"], saturation_concurrency=best["concurrency"])
        line = f"saturation: {best['images_per_s']:.2f} img/s at concurrency {best['concurrency']}"
        if baseline:
            multiple = best["images_per_s"] / baseline["images_per_s"]
            ratios["saturation_over_diffusers_b1"] = multiple
            line += f" = x{multiple:.2f} the diffusers eager batch-1 rate {baseline['images_per_s']:.2f} img/s"
            if target_throughput_x is not None:
                ratios["throughput_target_met"] = multiple >= target_throughput_x
                met = "met" if ratios["throughput_target_met"] else "NOT met"
                line += f" (target >= {target_throughput_x:g}x: {met})"
        else:
            line += " (no diffusers baseline in a rehearsal)"
        print(line)
    else:
        print("saturation: no image was served")
    return ratios


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rehearse", action="store_true", help="CPU rehearsal: tiny models, no baseline.")
    parser.add_argument("--flux", type=json.loads, help=f"the flux: block as JSON (GPU default {json.dumps(GPU_FLUX)})")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--requests-per-level", type=int, help="default max(8, 4 x concurrency)")
    parser.add_argument("--level-timeout-s", type=float, default=60.0, help="no request starts later in a level")
    parser.add_argument("--request-timeout-s", type=float, default=130.0, help="client-side limit per request")
    parser.add_argument("--startup-timeout-s", type=float, default=300.0)
    parser.add_argument("--baseline-calls", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=8, help="batching.generator.max_batch_size")
    parser.add_argument("--size", default="512x512", help="WIDTHxHEIGHT of every request (the app offers it alone)")
    parser.add_argument("--output-format", default="png", choices=["png", "jpeg", "webp"], help="of every request")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--out", default="served_load.json")
    args = parser.parse_args(argv)

    # A plain ray.init() turns on token authentication and writes ~/.ray/auth_token; a benchmark needs none.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import torch

    from deployments.config import AppArgs

    if not args.rehearse and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run on the GPU host, or try the script with --rehearse")
    if not port_is_free(args.port):
        sys.exit(f"127.0.0.1:{args.port} is taken (another Serve?): pass --port")
    card = card_name()
    found = versions()
    print(f"card: {card}; {found}", flush=True)
    config = served_config(args.rehearse, args.flux, args.port, args.max_batch_size, args.size)
    app_config = config["applications"][0]
    AppArgs.model_validate(app_config["args"])  # refuse a bad --flux here, not in a replica
    app_name, url = app_config["name"], f"http://127.0.0.1:{args.port}"

    baseline = None if args.rehearse else diffusers_baseline(args.baseline_calls, args.size)

    import ray
    from ray import serve

    start = time.perf_counter()
    # A Ray already started in this process (a test session's, with logical GPUs) serves the rehearsal; else one
    # starts here. Logical CPUs in a rehearsal: the GPU profile's replicas ask for 4 and a laptop may have 2.
    own_ray = not ray.is_initialized()
    if own_ray:
        cpus = {"num_cpus": 8} if args.rehearse else {}
        ray.init(address="local", num_gpus=2 if args.rehearse else 1, include_dashboard=False, **cpus)
    try:
        ray_s = time.perf_counter() - start
        start = time.perf_counter()
        deploy(config)
        wait_running(app_name, url, args.startup_timeout_s)
        startup_s = time.perf_counter() - start
        print(f"ray.init {ray_s:.1f} s; application RUNNING after {startup_s:.1f} s", flush=True)
        # The YAML's deployment options reached the replicas if 0.9 GPU and 4.5 CPUs are held.
        resources = {"total": ray.cluster_resources(), "available": ray.available_resources()}
        held = {key: resources["total"][key] - resources["available"].get(key, 0.0) for key in ("CPU", "GPU")}
        print(f"held by Serve: {held}", flush=True)

        index = 1_000_000  # request prompts and seeds never repeat the baseline's
        warmup = asyncio.run(burst(url + GENERATIONS, 1, 1, index, args))
        index += 1
        print(f"warm-up request: {warmup[0][0]}", flush=True)
        levels = []
        for concurrency in args.concurrency:
            requests = args.requests_per_level or max(8, 4 * concurrency)
            levels.append(run_level(url + GENERATIONS, app_name, concurrency, requests, index, args))
            index += concurrency + requests

        ratios = report(card, found, baseline, startup_s, levels, args, app_config["args"]["flux"])
        result = {
            "card": card,
            "versions": found,
            "rehearse": args.rehearse,
            "request": {"size": args.size, "n": 1, "num_inference_steps": STEPS, "output_format": args.output_format},
            "config": config,
            "baseline": baseline,
            "ray_init_s": ray_s,
            "ray_resources": resources,
            "startup_s": startup_s,
            "warmup_request": warmup[0][0],
            "levels": levels,
            "ratios": ratios,
        }
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}", flush=True)
    finally:
        serve.shutdown()
        if own_ray:
            ray.shutdown()


if __name__ == "__main__":
    main()
