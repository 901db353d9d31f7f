"""VRAM-aware placement and scaling on real GPUs: one Ray node per GPU, replicas packed by `vram_gb`.

    python -m benchmarks.vram_placement                        # every GPU of this host, full-size Flux
    python -m benchmarks.vram_placement --rehearse 2           # CPU rehearsal: 2 logical GPUs, tiny models

Each GPU gets its own raylet (CUDA_VISIBLE_DEVICES) advertising that GPU's memory as `vram_gb`
(`deployments.vram`), so the resource is exact per GPU. The generator asks for 0.45 GPU but more
VRAM than half a card, so Ray could pack two on one GPU by `num_gpus` and only the VRAM resource
spreads them. On a one-GPU host it asks for 40% of the card, so two share it and a third does not
fit: that run measures the scale-up time with the profile's engine, not the spread. The script
deploys `configs/gpu-80gb.yaml` (adapted: random weights, a node per GPU, the generator allowed 1 to
3 replicas) through `serve deploy`, as production runs it: API keys on, the replicas
reading them from `VORTEX_API_KEYS` (the application's runtime_env) and the load sending one. It
loads the service until the VRAM-aware policy has added a replica, keeps the load on for `--hold-s`
while a replica more would not fit, then waits for the scale-down. It prints where replicas ran, what
the policy logged, the served throughput with one generator and with two, and the time from the
autoscaler's scale-up decision (the controller's `Upscaling` line) to the new replica's first answer
(its first `generate_stream` in its log), and each generator replica's start as Serve timed it (scheduled
to ready). Last, it kills the generator's replica, as a crash would, and times Serve's replacement: a
restarted replica on a card of its own, which reads the compile cache the first one left. If the
application does not reach RUNNING, it prints each deployment's status and Serve's message (a replica's
error) before failing. Writes JSON. The load is bounded in requests and time.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import yaml

from benchmarks.common import REPO, app_args, random_weight_verifier

URL = "http://127.0.0.1:8000"
API_KEY = "vram-placement-benchmark-key"
LOG_TIME = re.compile(r"^\w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def start_cluster(gpus: int, rehearse: bool):
    """One node per GPU; returns the ray.cluster_utils.Cluster."""
    from ray.cluster_utils import Cluster

    from deployments.vram import GIB, gpu_memory

    cluster = Cluster()
    for gpu in range(gpus):
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # the raylet started next sees this GPU alone
        vram_gb = 24 if rehearse else int(gpu_memory([str(gpu)])[1] / GIB - 1)
        node = {"num_cpus": 4 if rehearse else 8, "num_gpus": 1, "resources": {"vram_gb": vram_gb}}
        cluster.add_node(**node, **({"include_dashboard": True} if gpu == 0 else {}))
        print(f"node {gpu}: GPU {gpu}, vram_gb {vram_gb}", flush=True)
    os.environ.pop("CUDA_VISIBLE_DEVICES")
    return cluster


def placement_config(rehearse: bool, vram_per_generator: int, flux: dict | None = None) -> dict:
    config = yaml.safe_load((REPO / "configs/gpu-80gb.yaml").read_text())
    config["proxy_location"] = "HeadOnly"  # one HTTP port on this host
    app = config["applications"][0]
    app["args"]["flux"] = (
        {"random_weights": "tiny", "precision": "fp32", "device": "cpu"}
        if rehearse
        else flux or {**app["args"]["flux"], "random_weights": "full"}  # the profile's engine: fp8, compiled, graphed
    )
    verifier = app["args"]["verifier"]
    if rehearse:  # the CPU profile's tiny CLIP models; CUDA graphs need a GPU
        local = app_args("configs/local.yaml")
        verifier = {**local["verifier"], "cuda_graphs": 0}
    app["args"]["verifier"] = random_weight_verifier(verifier)
    # API keys on, as in production: the replicas read them from the environment Serve gives them.
    app["runtime_env"] = {"env_vars": {"VORTEX_API_KEYS": API_KEY}}
    deployments = {d["name"]: d for d in app["deployments"]}
    if rehearse:
        deployments["Ingress"]["num_replicas"] = 1  # each replica process costs a 2-core machine seconds of imports
    generator = deployments["FluxGenerator"]
    # The profile's 0.45 GPU: two generators and the verifier (0.1) fit one GPU by `num_gpus`.
    generator["ray_actor_options"] = {"num_cpus": 2, "num_gpus": 0.45, "resources": {"vram_gb": vram_per_generator}}
    generator["autoscaling_config"].update(
        min_replicas=1,
        max_replicas=3,
        metrics_interval_s=1,
        look_back_period_s=3,
        upscale_delay_s=0,
        downscale_delay_s=2,
    )
    return config


def application(dashboard: str) -> dict:
    details = requests.get(f"http://{dashboard}/api/serve/applications/", timeout=10).json()
    return details.get("applications", {}).get("vortex", {})


def replicas(dashboard: str, deployment: str) -> list[dict]:
    return application(dashboard).get("deployments", {}).get(deployment, {}).get("replicas", [])


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise TimeoutError(f"{what} within {timeout_s} s")


def serve_errors(dashboard: str) -> str:
    """Each deployment's status and Serve's message (where a replica failed to start, its error)."""
    lines = []
    for name, deployment in application(dashboard).get("deployments", {}).items():
        states = [replica["state"] for replica in deployment.get("replicas", [])]
        lines.append(f"{name}: {deployment.get('status')} replicas {states}: {deployment.get('message', '')}")
    return "\n".join(lines)


def load_until_scaled(dashboard: str, clients: int, max_requests: int, timeout_s: float, hold_s: float) -> dict:
    """Closed-loop load until two generators have served for `hold_s`. Returns the generator's replica states
    each second, and the served throughput while one replica ran and while two did."""
    stop, sent, done, states = threading.Event(), [0], [], []
    lock = threading.Lock()

    def client(worker: int) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        while not stop.is_set():
            with lock:
                if sent[0] >= max_requests:
                    return
                sent[0] += 1
            body = {"prompt": "a harbour at dawn, oil painting", "seed": worker}
            status = requests.post(f"{URL}/v1/images/generations", json=body, headers=headers, timeout=120).status_code
            done.append((time.monotonic(), status))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    two_running_since = None
    while time.monotonic() - start < timeout_s and sent[0] < max_requests:
        states.append([r["state"] for r in replicas(dashboard, "FluxGenerator")])
        if states[-1].count("RUNNING") >= 2:
            two_running_since = two_running_since or time.monotonic()
            if time.monotonic() - two_running_since > hold_s:  # a third replica would not fit: none may be added
                break
        time.sleep(1)
    stop.set()
    end = time.monotonic()
    for thread in threads:
        thread.join()

    def images_per_s(since: float, until: float) -> float:
        return sum(since <= t < until for t, status in done if status == 200) / max(until - since, 1e-9)

    scaled_at = two_running_since or end
    return {
        "requests": sent[0],
        "statuses": [status for _, status in done],
        "seconds": round(end - start, 1),
        "replica_states": states,
        # The first seconds with one replica fill its queue; the rest is its steady rate.
        "images_per_s_one_replica": images_per_s(start + min(5.0, (scaled_at - start) / 2), scaled_at),
        "images_per_s_two_replicas": images_per_s(scaled_at, end) if two_running_since else 0.0,
    }


def restart_generator(dashboard: str) -> dict:
    """Kill the generator's one replica (its process dies, as in a crash) and wait for Serve's replacement."""
    import ray

    (killed,) = replicas(dashboard, "FluxGenerator")
    ray.kill(ray.get_actor(killed["actor_name"], namespace="serve"), no_restart=True)
    start = time.monotonic()

    def replacements() -> list[str]:
        return [r["replica_id"] for r in replicas(dashboard, "FluxGenerator")
                if r["replica_id"] != killed["replica_id"] and r["state"] == "RUNNING"]  # fmt: skip

    wait_until(replacements, 300, "no replacement for the killed generator replica")
    seconds = round(time.monotonic() - start, 1)
    return {"killed": killed["replica_id"], "replacement": replacements()[0], "killed_to_running_s": seconds}


def log_time(line: str) -> float | None:
    """Seconds since the epoch of a Serve log line ('INFO 2026-12-01 01:17:06,293 ...')."""
    match = LOG_TIME.match(line)
    return (
        time.mktime(time.strptime(match.group(1)[:19], "%Y-%m-%d %H:%M:%S")) + int(match.group(1)[20:]) / 1000
        if match
        else None
    )


def controller_lines(logs: Path) -> list[str]:
    """Every line Serve's controller has logged so far."""
    return [line for path in logs.glob("controller_*.log") for line in path.read_text().splitlines()]


def scale_up_to_first_answer_s(logs: Path, first_replicas: set[str]) -> float | None:
    """From the controller's first `Upscaling` of the generator to a new replica's first answer, from Serve's logs."""
    upscaling = "Upscaling Deployment(name='FluxGenerator'"
    decisions = [log_time(line) for line in controller_lines(logs) if upscaling in line]
    answers = [
        log_time(line)
        for path in logs.glob("replica_vortex_FluxGenerator_*.log")
        if path.stem.rsplit("_", 1)[-1] not in first_replicas
        for line in path.read_text().splitlines()
        if "generate_stream OK" in line
    ]
    if not decisions or not answers:
        return None
    return min(answers) - min(decisions)


REPLICA_STARTED = re.compile(
    r"Replica\(id='(\w+)', deployment='FluxGenerator'.*started successfully.* after ([\d.]+)s.* took ([\d.]+)s"
)


def generator_starts(controller: list[str]) -> list[dict]:
    """Each generator replica's start as Serve's controller timed it (its log lines): from starting the replica
    (scheduling its actor) to ready, and the part in its constructor (the engine's imports, load and warm-up)."""
    return [
        {"replica": found[1], "scheduled_to_ready_s": float(found[2]), "constructor_s": float(found[3])}
        for line in controller
        if (found := REPLICA_STARTED.search(line))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rehearse", type=int, metavar="GPUS", help="CPU rehearsal with this many logical GPUs.")
    parser.add_argument("--flux", type=json.loads, help="the flux: block as JSON instead of the profile's (GPU)")
    parser.add_argument("--hold-s", type=float, default=30, help="Load kept on with two generators running.")
    parser.add_argument("--out", default="vram_placement.json")
    args = parser.parse_args()

    import ray

    rehearse = args.rehearse is not None
    if rehearse:
        gpus = args.rehearse
        cards = ["CPU rehearsal"] * gpus
    else:
        import torch

        gpus = torch.cuda.device_count()
        cards = [torch.cuda.get_device_name(i) for i in range(gpus)]
    print("cards:", cards, flush=True)
    cluster = start_cluster(gpus, rehearse)
    ray.init(address=cluster.address)
    try:
        dashboard = cluster.webui_url
        # Under half a GPU each, but more than half a node's VRAM: one replica per GPU. On a one-GPU host, 40% of
        # its VRAM: two replicas share the card (this measures the scale-up time, not the spread).
        from deployments.vram import GIB, gpu_memory

        share = 0.6 if gpus > 1 else 0.4
        vram_each = 13 if rehearse else int(share * gpu_memory(["0"])[1] / GIB)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config_file:
            yaml.safe_dump(placement_config(rehearse, vram_each, args.flux), config_file)
        deploy = [sys.executable, "-m", "ray.serve.scripts", "deploy", config_file.name]  # the `serve` CLI
        subprocess.run([*deploy, "--address", f"http://{dashboard}"], check=True)
        try:
            # The profile's first replica on an empty compile cache compiles its precompiled regions: 256 s, H200.
            wait_until(lambda: application(dashboard).get("status") == "RUNNING", 600, "the application is not RUNNING")
        except TimeoutError:
            print(serve_errors(dashboard), flush=True)
            raise
        first_replicas = {r["replica_id"] for r in replicas(dashboard, "FluxGenerator")}
        print("deployed; generator replicas:", first_replicas, flush=True)
        # Enough clients to keep two replicas' batches full (the profile's max_batch_size: 2, with more queued).
        load = load_until_scaled(
            dashboard, clients=6 if rehearse else 12, max_requests=3000, timeout_s=240, hold_s=args.hold_s
        )
        logs = Path(cluster.head_node.get_session_dir_path()) / "logs/serve"
        load["scale_up_to_first_answer_s"] = scale_up_to_first_answer_s(logs, first_replicas)
        print("load:", {key: value for key, value in load.items() if key not in ("statuses", "replica_states")})
        one, two = load["images_per_s_one_replica"], load["images_per_s_two_replicas"]
        print(
            f"served throughput on {cards[0]}: one generator {one:.2f} img/s, two {two:.2f} img/s "
            f"({two / one if one else float('nan'):.2f}x; target >= 1.8x on two GPUs)",
            flush=True,
        )
        nodes = {node["NodeID"]: node["Resources"] for node in ray.nodes() if node["Alive"]}
        placed = [
            {"replica": r["replica_id"], "state": r["state"], "node": r["node_id"], "node_vram_gb": nodes[r["node_id"]]}
            for r in replicas(dashboard, "FluxGenerator")
        ]
        for replica in placed:
            print(f"FluxGenerator replica {replica['replica']}: {replica['state']} on node {replica['node'][:8]}")
        start = time.monotonic()
        wait_until(lambda: len(replicas(dashboard, "FluxGenerator")) == 1, 120, "no scale-down to 1 replica")
        print(f"scaled down to 1 replica {time.monotonic() - start:.0f} s after the load stopped", flush=True)
        restart = restart_generator(dashboard)
        print(f"killed generator replica {restart['killed']}: a replacement RUNNING {restart['killed_to_running_s']} s "
              "later", flush=True)  # fmt: skip
        controller = controller_lines(logs)
        starts = generator_starts(controller)
        kinds = {**dict.fromkeys(first_replicas, "first"), restart["replacement"]: "restarted"}
        for started in starts:
            kind = kinds.get(started["replica"], "added")
            print(
                f"FluxGenerator replica {started['replica']} ({kind}): ready {started['scheduled_to_ready_s']:.1f} s "
                f"after Serve started it ({started['constructor_s']:.1f} s in its constructor)",
                flush=True,
            )
        guard = [
            line.split(" -- ")[-1]
            for line in controller
            if "VRAM guard" in line or "replicas' VRAM as reported" in line
        ]
        for line in guard:
            print("controller:", line, flush=True)
        if not rehearse:
            print(subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.used,memory.total",
                                  "--format=csv"], capture_output=True, text=True).stdout, flush=True)  # fmt: skip
        with open(args.out, "w") as f:
            json.dump(
                {
                    "cards": cards,
                    "load": load,
                    "placed": placed,
                    "restart": restart,
                    "generator_starts": starts,
                    "controller": guard,
                },
                f,
                indent=2,
            )
    finally:
        from ray._private.utils import get_ray_address_file

        ray.shutdown()
        cluster.shutdown()
        Path(get_ray_address_file(None)).unlink(missing_ok=True)  # a later plain ray.init() starts afresh


if __name__ == "__main__":
    main()
