"""The README's cluster lines, run as written: two `ray start` nodes on this machine with token
authentication and the `vram_gb` resource, the preflight, `serve deploy` and `serve status`, then what
an operator does next: a generation, `user_config` updates in place (a typo the verifier refuses, then a
good one), a redeploy that replaces the generator while requests are in flight (they finish), and the
README's shutdown. VRAM-aware placement and scaling are tested by the rehearsal of
`benchmarks/vram_placement.py` (tests/test_benchmarks.py).

Needs Ray's default ports (6379, 8265) and 8000 free. `ray stop` would end every Ray process on the
host, so the test ends only what the README's lines started: the processes of their session.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from conftest import BASE_URL, REPO, deployment_entry, local_app_config, wait_for_http

DASHBOARD = "http://127.0.0.1:8265"


def readme_block(name: str) -> str:
    """The bash block after `<!-- cluster: NAME -->` in the README."""
    match = re.search(rf"<!-- cluster: {name} -->\n```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert match, f"README.md has no `<!-- cluster: {name} -->` bash block"
    return match.group(1)


@pytest.fixture(scope="module")
def shell_env(tmp_path_factory) -> dict[str, str]:
    """A fresh shell's environment with the venv active, and the variables the README's start block exports
    (the test's later commands run "in the same shell"). HOME is private: the token is the test's own."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env["HOME"] = str(tmp_path_factory.mktemp("home"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["VIRTUAL_ENV"] = str(Path(sys.executable).parents[1])
    exports = re.search(r"^export (.*)$", readme_block("start"), re.M)
    assert exports, "the README's start block exports RAY_AUTH_MODE, HEAD and CONFIG"
    return {**env, **dict(variable.split("=", 1) for variable in exports.group(1).split())}


@pytest.fixture(scope="module")
def cluster(shell_env):
    """Runs the README's start block in a session of its own; afterwards ends that session's processes."""
    start = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", readme_block("start")],
        cwd=REPO,
        env={key: value for key, value in shell_env.items() if not key.startswith("RAY_")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = start.communicate(timeout=240)
        assert start.returncode == 0, output[-4000:]
        yield output
    finally:
        end_session(start.pid)


def end_session(session: int) -> None:
    """What `ray stop` does, for the processes of one session only (the README's lines and what they started),
    including forgetting the cluster's address: `serve run` and `ray.init()` would try to join it."""
    from ray._private.utils import get_ray_address_file

    def members() -> list[int]:
        return processes(lambda pid: os.getsid(pid) == session)

    # A second's grace: some of a node's processes (its runtime env agent among them) outlast a SIGTERM by 8 s anyway.
    for sig, grace_s in ((signal.SIGTERM, 1), (signal.SIGKILL, 5)):
        for pid in members():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while members() and time.monotonic() < deadline:
            time.sleep(0.25)
    Path(get_ray_address_file(None)).unlink(missing_ok=True)


def serve_cli(env: dict[str, str], *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["serve", *args, "--address", DASHBOARD], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s
    )


def app_status(env: dict[str, str]) -> dict:
    """The `vortex` application from the dashboard's REST API, which `serve status` reads (polled here without
    starting a CLI process each time: on 2 cores that would slow the replicas it waits for)."""
    token = (Path(env["HOME"]) / ".ray/auth_token").read_text().strip()
    answer = requests.get(
        f"{DASHBOARD}/api/serve/applications/", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    answer.raise_for_status()
    return answer.json().get("applications", {}).get("vortex", {})


def wait_until(condition, timeout_s: float, interval_s: float = 1.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"condition not met within {timeout_s} s")


def deploy(
    env: dict[str, str], tmp_path: Path, app: dict, preflight: bool = False
) -> subprocess.CompletedProcess | None:
    """`serve deploy` of a changed configs/local.yaml, with the README's preflight if asked (deployed whatever it
    said, so the two run side by side: each is seconds of imports); waits until the application runs the new
    config. Returns the preflight's result."""
    config = yaml.safe_load((REPO / "configs/local.yaml").read_text())
    config["applications"] = [app]
    path = tmp_path / f"config-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    check = None
    if preflight:
        command = [sys.executable, "-m", "deployments.check", str(path), "--address", DASHBOARD]
        check = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deployed_before = app_status(env)["last_deployed_time_s"]
    result = serve_cli(env, "deploy", str(path))
    assert result.returncode == 0, result.stderr

    def runs_the_new_config() -> bool:  # the controller has it once `serve deploy` returns, DEPLOYING until it runs
        status = app_status(env)
        return status["last_deployed_time_s"] != deployed_before and status["status"] == "RUNNING"

    wait_until(runs_the_new_config, timeout_s=180)
    if check is None:
        return None
    stdout, stderr = check.communicate(timeout=60)
    return subprocess.CompletedProcess(check.args, check.returncode, stdout, stderr)


def processes(matches) -> list[int]:
    """Pids of this host's processes for which `matches(pid)` holds; those that end meanwhile are skipped."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if matches(int(entry.name)):
                    pids.append(int(entry.name))
            except OSError:  # ProcessLookupError, PermissionError and FileNotFoundError included
                pass
    return pids


def replica_pids(deployment: str) -> set[int]:
    """Pids of the deployment's replica processes on this host."""
    return set(processes(lambda pid: f"ServeReplica:vortex:{deployment}" in Path(f"/proc/{pid}/cmdline").read_text()))


def generate(prompt: str = "a kite") -> requests.Response:
    return requests.post(BASE_URL + "/v1/images/generations", json={"prompt": prompt, "size": "256x256"}, timeout=120)


def test_the_readme_cluster_serves_updates_in_place_drains_on_redeploy_and_stops(cluster, shell_env, tmp_path):
    assert "ok (1 application(s) and its placement" in cluster  # the preflight checked placement on the cluster
    nodes = subprocess.run(["ray", "status"], env=shell_env, capture_output=True, text=True, timeout=60)
    assert nodes.returncode == 0 and len(re.findall(r"^ 1 node_", nodes.stdout, re.M)) == 2, nodes.stdout
    wait_until(lambda: app_status(shell_env).get("status") == "RUNNING", timeout_s=240)
    status = serve_cli(shell_env, "status")
    assert status.returncode == 0 and "status: RUNNING" in status.stdout, status.stderr
    wait_for_http(BASE_URL + "/readyz", timeout_s=60)
    assert generate().status_code == 200

    # A redeploy that replaces the generator, with requests in flight: each finishes with its image.
    generator_pids = replica_pids("FluxGenerator")
    statuses: list[int] = []
    stop = threading.Event()

    def keep_generating() -> None:
        while not stop.is_set():
            statuses.append(generate("a lighthouse").status_code)

    clients = [threading.Thread(target=keep_generating) for _ in range(3)]
    for client in clients:
        client.start()
    app = local_app_config()
    app["args"]["flux"]["prompt_cache_size"] = 8
    deploy(shell_env, tmp_path, app)
    wait_until(lambda: replica_pids("FluxGenerator").isdisjoint(generator_pids), timeout_s=60)
    stop.set()
    for client in clients:
        client.join(timeout=130)
    assert len(statuses) >= 6 and set(statuses) == {200}, statuses

    # A typo, deployed although the preflight refused it: the verifier keeps its last good settings.
    verifier = deployment_entry(app, "ClipVerifier")
    kites = {"concepts": [{"name": "kites", "captions": ["a kite"], "threshold": -2.0}]}
    verifier_pids = replica_pids("ClipVerifier")
    verifier["user_config"] = {"policy": kites, "calibraton": {}}
    preflight = deploy(shell_env, tmp_path, app, preflight=True)
    assert preflight.returncode == 1 and "user_config.calibraton: Extra inputs are not permitted" in preflight.stderr
    assert generate().status_code == 200  # still verified, with the old policy
    logs = Path("/tmp/ray/session_latest/logs/serve").glob("replica_vortex_ClipVerifier_*.log")
    assert "user_config refused; verifying with the last good settings" in "".join(p.read_text() for p in logs)

    verifier["user_config"] = {"policy": kites}
    assert deploy(shell_env, tmp_path, app, preflight=True).returncode == 0
    wait_until(lambda: generate().status_code == 422, timeout_s=60)  # the new policy withholds kites
    assert replica_pids("ClipVerifier") == verifier_pids  # both updates in place: the same process

    # The README's shutdown; its `ray stop` is the fixture's end of this session.
    stop_block = readme_block("stop").replace("ray stop", ": ray stop")
    stopped = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", stop_block],
        cwd=REPO,
        env=shell_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stopped.returncode == 0, stopped.stderr
    assert app_status(shell_env) == {}
