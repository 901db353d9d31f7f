"""A two-node Ray cluster on this machine, driven as an operator would: `serve deploy`, `serve status`,
the dashboard's REST API and HTTP. The nodes have logical GPUs and advertise `vram_gb`, so placement
and the VRAM-aware policy act as on GPU nodes (the tiny models run on the CPU)."""

import copy
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from conftest import BASE_URL, REPO, local_app_config, wait_for_http

NODE = {"num_cpus": 4, "num_gpus": 1, "resources": {"vram_gb": 12}}
GENERATOR_NEED = {
    "num_cpus": 0.5,
    "num_gpus": 0.5,
    "resources": {"vram_gb": 10},
}  # GPU-wise two fit a node; VRAM-wise one


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray._private.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": True})
    cluster.add_node(**NODE)
    ray.init(address=cluster.address)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        Path(get_ray_address_file(None)).unlink(missing_ok=True)  # so later ray.init() calls start afresh


def serve_cli(cluster, *args: str) -> subprocess.CompletedProcess:
    serve = Path(sys.executable).with_name("serve")
    return subprocess.run(
        [str(serve), *args, "--address", f"http://{cluster.webui_url}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def deploy(cluster, tmp_path: Path, app: dict) -> None:
    config = yaml.safe_load((REPO / "configs/local.yaml").read_text())
    config["applications"] = [app]
    path = tmp_path / f"config-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    result = serve_cli(cluster, "deploy", str(path))
    assert result.returncode == 0, result.stderr
    wait_until(lambda: app_details(cluster).get("status") == "RUNNING", timeout_s=180)
    wait_for_http(BASE_URL + "/healthz", timeout_s=60)


def app_details(cluster) -> dict:
    details = requests.get(f"http://{cluster.webui_url}/api/serve/applications/", timeout=10).json()
    return details.get("applications", {}).get("vortex", {})


def replicas(cluster, deployment: str) -> list[dict]:
    return app_details(cluster).get("deployments", {}).get(deployment, {}).get("replicas", [])


def wait_until(condition, timeout_s: float, interval_s: float = 1.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"condition not met within {timeout_s} s")


def with_generator(app: dict, **options) -> dict:
    app = copy.deepcopy(app)
    generator = next(d for d in app["deployments"] if d["name"] == "FluxGenerator")
    generator.pop("num_replicas", None)
    generator.update(options)
    return app


def generate(seed: int) -> int:
    body = {"prompt": "a busy harbour", "size": "256x256", "seed": seed}
    return requests.post(BASE_URL + "/v1/images/generations", json=body, timeout=120).status_code


def test_serve_deploy_and_status_from_the_cli_and_user_config_updates_in_place(cluster, tmp_path):
    app = local_app_config()
    deploy(cluster, tmp_path, app)
    status = serve_cli(cluster, "status")
    assert status.returncode == 0 and "RUNNING" in status.stdout
    assert generate_kite().status_code == 200
    before = {(r["replica_id"], r["pid"]) for r in replicas(cluster, "ClipVerifier")}

    verifier = next(d for d in app["deployments"] if d["name"] == "ClipVerifier")
    verifier["user_config"] = {"policy": {"concepts": [{"name": "kites", "captions": ["a kite"], "threshold": -2.0}]}}
    deploy(cluster, tmp_path, app)
    wait_until(lambda: generate_kite().status_code == 422, timeout_s=60)  # the new policy withholds kites
    assert {(r["replica_id"], r["pid"]) for r in replicas(cluster, "ClipVerifier")} == before


def generate_kite() -> requests.Response:
    body = {"prompt": "a kite", "size": "256x256"}
    return requests.post(BASE_URL + "/v1/images/generations", json=body, timeout=60)


def test_replicas_spread_over_nodes_by_the_vram_resource(cluster, tmp_path):
    deploy(cluster, tmp_path, with_generator(local_app_config(), num_replicas=2, ray_actor_options=GENERATOR_NEED))
    running = [r for r in replicas(cluster, "FluxGenerator") if r["state"] == "RUNNING"]
    assert len(running) == 2
    assert len({r["node_id"] for r in running}) == 2  # half a GPU each would share a node; 10 of 12 GB cannot


def test_generator_scales_up_under_load_within_vram_and_back_down(cluster, tmp_path):
    autoscaling = {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 1,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 2,
        "upscale_delay_s": 0,
        "downscale_delay_s": 3,
        "policy": {"policy_function": "deployments.autoscaling:VramAwarePolicy"},
    }
    app = with_generator(local_app_config(), ray_actor_options=GENERATOR_NEED, autoscaling_config=autoscaling)
    deploy(cluster, tmp_path, app)
    assert len(replicas(cluster, "FluxGenerator")) == 1

    stop = threading.Event()

    def keep_generating(worker: int) -> list[int]:
        statuses = []
        while not stop.is_set():
            statuses.append(generate(worker))
        return statuses

    seen_states: list[list[str]] = []
    with ThreadPoolExecutor(max_workers=12) as pool:
        workers = [pool.submit(keep_generating, worker) for worker in range(12)]
        two_running_since = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            seen_states.append([r["state"] for r in replicas(cluster, "FluxGenerator")])
            if seen_states[-1].count("RUNNING") == 2:
                two_running_since = two_running_since or time.monotonic()
                if time.monotonic() - two_running_since > 8:  # held at 2 under load asking for 4
                    break
            time.sleep(0.5)
        stop.set()
        assert all(status == 200 for worker in workers for status in worker.result())

    assert max(states.count("RUNNING") for states in seen_states) == 2
    assert max(len(states) for states in seen_states) <= 2  # no replica left pending for VRAM it cannot get
    logs = "".join(
        p.read_text() for p in Path(cluster.head_node.get_session_dir_path()).glob("logs/serve/controller_*.log")
    )
    assert "VRAM guard: FluxGenerator wants" in logs
    wait_until(lambda: len(replicas(cluster, "FluxGenerator")) == 1, timeout_s=60)
