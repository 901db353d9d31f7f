"""VRAM-aware placement and scaling on real GPUs: one Ray node per GPU, replicas packed by `vram_gb`.

    python -m benchmarks.vram_placement                        # every GPU of this host, full-size Flux
    python -m benchmarks.vram_placement --rehearse 2           # CPU rehearsal: 2 logical GPUs, tiny models

Each GPU gets its own raylet (CUDA_VISIBLE_DEVICES) advertising that GPU's memory as `vram_gb`
(`deployments.vram`), so the resource is exact per GPU. The generator asks for half a GPU but more
VRAM than half a card, so Ray could pack two on one GPU by `num_gpus` and only the VRAM resource
spreads them. The script deploys `configs/gpu-80gb.yaml` (adapted: random weights, no API keys, the
generator allowed 1 to 3 replicas) through `serve deploy`, loads the service until the VRAM-aware
policy has added a replica, keeps the load on while a replica more would not fit, then waits for the
scale-down. It prints where replicas ran and what the policy logged, and writes JSON: the replica
states seen, request statuses, the controller's VRAM-guard lines. The load is bounded in requests
and time.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import yaml

from benchmarks.common import REPO, random_weight_verifier

URL = "http://127.0.0.1:8000"
HOLD_S = 5  # load kept on with two replicas running, while the policy must not add a third


def start_cluster(gpus: int, rehearse: bool):
    """One node per GPU; returns the ray.cluster_utils.Cluster."""
    from ray.cluster_utils import Cluster

    from deployments.vram import GIB, gpu_memory

    cluster = Cluster()
    for gpu in range(gpus):
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # the raylet started next sees this GPU alone
        vram_gb = 24 if rehearse else int(gpu_memory([str(gpu)])[1] / GIB - 1)
        node = {"num_cpus": 8, "num_gpus": 1, "resources": {"vram_gb": vram_gb}}
        cluster.add_node(**node, **({"include_dashboard": True} if gpu == 0 else {}))
        print(f"node {gpu}: GPU {gpu}, vram_gb {vram_gb}", flush=True)
    os.environ.pop("CUDA_VISIBLE_DEVICES")
    return cluster


def placement_config(rehearse: bool, vram_per_generator: int) -> dict:
    config = yaml.safe_load((REPO / "configs/gpu-80gb.yaml").read_text())
    config["proxy_location"] = "HeadOnly"  # one HTTP port on this host
    app = config["applications"][0]
    app["args"]["flux"] = (
        {"random_weights": "tiny", "precision": "fp32", "device": "cpu"}
        if rehearse
        else {"random_weights": "full", "precision": "bf16"}
    )
    verifier = app["args"]["verifier"]
    if rehearse:  # the CPU profile's tiny CLIP models; CUDA graphs need a GPU
        local = yaml.safe_load((REPO / "configs/local.yaml").read_text())["applications"][0]["args"]
        verifier = {**local["verifier"], "cuda_graphs": 0}
    app["args"]["verifier"] = random_weight_verifier(verifier)
    app["args"]["serving"] = {"auth": {"disabled": True}}  # the load comes from this script, without keys
    deployments = {d["name"]: d for d in app["deployments"]}
    generator = deployments["FluxGenerator"]
    generator["ray_actor_options"] = {"num_cpus": 2, "num_gpus": 0.5, "resources": {"vram_gb": vram_per_generator}}
    generator["autoscaling_config"].update(
        min_replicas=1,
        max_replicas=3,
        metrics_interval_s=1,
        look_back_period_s=3,
        upscale_delay_s=0,
        downscale_delay_s=2,
    )
    return config


def replicas(dashboard: str, deployment: str) -> list[dict]:
    details = requests.get(f"http://{dashboard}/api/serve/applications/", timeout=10).json()
    app = details.get("applications", {}).get("vortex", {})
    return app.get("deployments", {}).get(deployment, {}).get("replicas", [])


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise TimeoutError(f"{what} within {timeout_s} s")


def application_status(dashboard: str) -> str | None:
    details = requests.get(f"http://{dashboard}/api/serve/applications/", timeout=10).json()
    return details.get("applications", {}).get("vortex", {}).get("status")


def load_until_scaled(dashboard: str, clients: int, max_requests: int, timeout_s: float) -> dict:
    """Closed-loop load until two generators have run for `HOLD_S`; the generator's replica states each second."""
    stop, sent, statuses, states = threading.Event(), [0], [], []
    lock = threading.Lock()

    def client(worker: int) -> None:
        while not stop.is_set():
            with lock:
                if sent[0] >= max_requests:
                    return
                sent[0] += 1
            body = {"prompt": "a harbour at dawn, oil painting", "seed": worker}
            statuses.append(requests.post(f"{URL}/v1/images/generations", json=body, timeout=120).status_code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start, two_running_since = time.monotonic(), None
    while time.monotonic() - start < timeout_s and sent[0] < max_requests:
        states.append([r["state"] for r in replicas(dashboard, "FluxGenerator")])
        if states[-1].count("RUNNING") >= 2:
            two_running_since = two_running_since or time.monotonic()
            if time.monotonic() - two_running_since > HOLD_S:  # a third replica would not fit: none may be added
                break
        time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join()
    seconds = round(time.monotonic() - start, 1)
    return {"requests": sent[0], "statuses": statuses, "seconds": seconds, "replica_states": states}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rehearse", type=int, metavar="GPUS", help="CPU rehearsal with this many logical GPUs.")
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
        # Half a GPU each, but more than half a node's VRAM: one replica per GPU.
        vram_each = 13 if rehearse else 45
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config_file:
            yaml.safe_dump(placement_config(rehearse, vram_each), config_file)
        deploy = [sys.executable, "-m", "ray.serve.scripts", "deploy", config_file.name]  # the `serve` CLI
        subprocess.run([*deploy, "--address", f"http://{dashboard}"], check=True)
        wait_until(lambda: application_status(dashboard) == "RUNNING", 400, "the application did not reach RUNNING")
        print("deployed; generator replicas:", replicas(dashboard, "FluxGenerator"), flush=True)
        load = load_until_scaled(dashboard, clients=6, max_requests=3000, timeout_s=240)
        print("load:", {key: value for key, value in load.items() if key not in ("statuses", "replica_states")})
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
        logs = Path(cluster.head_node.get_session_dir_path()).glob("logs/serve/controller_*.log")
        guard = [
            line.split(" -- ")[-1]
            for path in logs
            for line in path.read_text().splitlines()
            if "VRAM guard" in line or "replicas' VRAM as reported" in line
        ]
        for line in guard:
            print("controller:", line, flush=True)
        if not rehearse:
            print(subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.used,memory.total",
                                  "--format=csv"], capture_output=True, text=True).stdout, flush=True)  # fmt: skip
        with open(args.out, "w") as f:
            json.dump({"cards": cards, "load": load, "placed": placed, "controller": guard}, f, indent=2)
    finally:
        from ray._private.utils import get_ray_address_file

        ray.shutdown()
        cluster.shutdown()
        Path(get_ray_address_file(None)).unlink(missing_ok=True)  # a later plain ray.init() starts afresh


if __name__ == "__main__":
    main()
