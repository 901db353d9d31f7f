"""VRAM-aware placement and scale-up on real GPUs: one Ray node per GPU, replicas packed by `vram_gb`.

    python benchmarks/vram_placement.py                        # every GPU of this host, full-size Flux
    python benchmarks/vram_placement.py --rehearse 2           # CPU rehearsal: 2 logical GPUs, tiny models

Each GPU gets its own raylet (CUDA_VISIBLE_DEVICES) advertising that GPU's memory as `vram_gb`
(`deployments.vram`), so the resource is exact per GPU. The generator asks for half a GPU but more
VRAM than half a card, so Ray could pack two on one GPU by `num_gpus` and only the VRAM resource
spreads them. The script deploys through `serve deploy`, loads the service until the VRAM-aware
policy adds a replica, and prints what the policy saw (the controller log) and where replicas ran.
The load is bounded in requests and time.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
URL = "http://127.0.0.1:8000"
ACCEPT_ALL = {"threshold": -1.0, "matched_mean": 0.1, "mismatched_mean": 0.0}


def start_cluster(gpus: int, rehearse: bool):
    """One node per GPU; returns the ray.cluster_utils.Cluster."""
    from ray.cluster_utils import Cluster

    from deployments.vram import GB, gpu_memory

    cluster = Cluster()
    for gpu in range(gpus):
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # the raylet started next sees this GPU alone
        vram_gb = 24 if rehearse else int(gpu_memory([str(gpu)])[1] / GB - 1)
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
    verifier.update(distractors=[], policy={"concepts": []})
    if rehearse:
        verifier.update(precision="fp32", device="cpu")
    verifier["models"] = [
        {**model, "pretrained": None, "calibration": ACCEPT_ALL} for model in verifier["models"]
    ]  # random weights: no download; speed and memory as with OpenAI's
    deployments = {d["name"]: d for d in app["deployments"]}
    generator = deployments["FluxGenerator"]
    generator["ray_actor_options"] = {"num_cpus": 2, "num_gpus": 0.5, "resources": {"vram_gb": vram_per_generator}}
    generator["autoscaling_config"].update(
        min_replicas=1, max_replicas=3, metrics_interval_s=1, look_back_period_s=3, upscale_delay_s=0
    )
    return config


def replicas(dashboard: str, deployment: str) -> list[dict]:
    details = requests.get(f"http://{dashboard}/api/serve/applications/", timeout=10).json()
    app = details.get("applications", {}).get("vortex", {})
    return app.get("deployments", {}).get(deployment, {}).get("replicas", [])


def wait_running(dashboard: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        details = requests.get(f"http://{dashboard}/api/serve/applications/", timeout=10).json()
        if details.get("applications", {}).get("vortex", {}).get("status") == "RUNNING":
            return
        time.sleep(2)
    raise TimeoutError("the application did not reach RUNNING")


def load_until_scaled(dashboard: str, clients: int, max_requests: int, timeout_s: float) -> dict:
    stop, sent, statuses = threading.Event(), [0], []
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
    start = time.monotonic()
    while time.monotonic() - start < timeout_s and sent[0] < max_requests:
        running = [r for r in replicas(dashboard, "FluxGenerator") if r["state"] == "RUNNING"]
        if len(running) >= 2:
            time.sleep(10)  # keep the load on: a third replica would not fit, the guard must hold it back
            break
        time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join()
    return {"requests": sent[0], "ok": statuses.count(200), "seconds": round(time.monotonic() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rehearse", type=int, metavar="GPUS", help="CPU rehearsal with this many logical GPUs.")
    args = parser.parse_args()

    import ray

    rehearse = args.rehearse is not None
    if rehearse:
        gpus = args.rehearse
    else:
        import torch

        gpus = torch.cuda.device_count()
        print("cards:", [torch.cuda.get_device_name(i) for i in range(gpus)], flush=True)
    cluster = start_cluster(gpus, rehearse)
    ray.init(address=cluster.address)
    try:
        # Half a GPU each, but more than half a node's VRAM: one replica per GPU.
        vram_each = 13 if rehearse else 45
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config_file:
            yaml.safe_dump(placement_config(rehearse, vram_each), config_file)
        deploy = [sys.executable, "-m", "ray.serve.scripts", "deploy", config_file.name]  # the `serve` CLI
        subprocess.run([*deploy, "--address", f"http://{cluster.webui_url}"], check=True)
        wait_running(cluster.webui_url, timeout_s=400)
        print("deployed; generator replicas:", replicas(cluster.webui_url, "FluxGenerator"), flush=True)
        print("load:", load_until_scaled(cluster.webui_url, clients=6, max_requests=3000, timeout_s=240), flush=True)
        nodes = {node["NodeID"]: node["Resources"] for node in ray.nodes() if node["Alive"]}
        for replica in replicas(cluster.webui_url, "FluxGenerator"):
            print(
                f"FluxGenerator replica {replica['replica_id']}: {replica['state']} on node "
                f"{replica['node_id'][:8]} (vram_gb {nodes.get(replica['node_id'], {}).get('vram_gb')})",
                flush=True,
            )
        logs = Path(cluster.head_node.get_session_dir_path()).glob("logs/serve/controller_*.log")
        for line in (line for path in logs for line in path.read_text().splitlines()):
            if "VRAM guard" in line or "replicas' VRAM as reported" in line:
                print("controller:", line.split(" -- ")[-1], flush=True)
        if not rehearse:
            print(subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.used,memory.total",
                                  "--format=csv"], capture_output=True, text=True).stdout, flush=True)  # fmt: skip
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
