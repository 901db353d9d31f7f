"""A two-node Ray cluster on this machine, driven as an operator would: `serve deploy`, `serve status`,
the dashboard's REST API and HTTP. The nodes have logical GPUs and advertise `vram_gb`. VRAM-aware
placement and scaling on such a cluster are tested by the rehearsal of `benchmarks/vram_placement.py`
(tests/test_benchmarks.py)."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from conftest import BASE_URL, REPO, deployment_entry, local_app_config, wait_for_http

NODE = {"num_cpus": 4, "num_gpus": 1, "resources": {"vram_gb": 12}}


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


def deploy(cluster, tmp_path: Path, app: dict) -> subprocess.CompletedProcess:
    """Preflight the config against the running cluster, as the README says, then `serve deploy` it whatever
    the preflight said; returns the preflight's result."""
    config = yaml.safe_load((REPO / "configs/local.yaml").read_text())
    config["applications"] = [app]
    path = tmp_path / f"config-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    check = [sys.executable, "-m", "deployments.check", str(path), "--address", f"http://{cluster.webui_url}"]
    preflight = subprocess.run(check, cwd=REPO, capture_output=True, text=True, timeout=60)
    result = serve_cli(cluster, "deploy", str(path))
    assert result.returncode == 0, result.stderr
    wait_until(lambda: app_details(cluster).get("status") == "RUNNING", timeout_s=180)
    wait_for_http(BASE_URL + "/readyz", timeout_s=60)
    return preflight


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


def test_serve_deploy_and_status_from_the_cli_and_user_config_updates_in_place(cluster, tmp_path):
    app = local_app_config()
    assert deploy(cluster, tmp_path, app).returncode == 0  # the preflight passed, placement included
    status = serve_cli(cluster, "status")
    assert status.returncode == 0 and "RUNNING" in status.stdout
    assert generate_kite().status_code == 200
    before = {(r["replica_id"], r["pid"]) for r in replicas(cluster, "ClipVerifier")}

    # A typo, deployed although the preflight refused it: the verifier keeps its last good settings.
    kites = {"concepts": [{"name": "kites", "captions": ["a kite"], "threshold": -2.0}]}
    verifier = deployment_entry(app, "ClipVerifier")
    verifier["user_config"] = {"policy": kites, "calibraton": {}}
    preflight = deploy(cluster, tmp_path, app)
    assert preflight.returncode == 1 and "user_config.calibraton: Extra inputs are not permitted" in preflight.stderr
    assert generate_kite().status_code == 200  # still verified, with the old policy
    logs = Path(cluster.head_node.get_session_dir_path()).glob("logs/serve/replica_vortex_ClipVerifier_*.log")
    assert "user_config refused; verifying with the last good settings" in "".join(p.read_text() for p in logs)
    assert {(r["replica_id"], r["pid"]) for r in replicas(cluster, "ClipVerifier")} == before

    verifier["user_config"] = {"policy": kites}
    assert deploy(cluster, tmp_path, app).returncode == 0
    wait_until(lambda: generate_kite().status_code == 422, timeout_s=60)  # the new policy withholds kites
    assert {(r["replica_id"], r["pid"]) for r in replicas(cluster, "ClipVerifier")} == before


def generate_kite() -> requests.Response:
    body = {"prompt": "a kite", "size": "256x256"}
    return requests.post(BASE_URL + "/v1/images/generations", json=body, timeout=60)
