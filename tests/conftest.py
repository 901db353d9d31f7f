"""Shared fixtures. Tests that need Ray start their own local cluster and end only that: the modules that
serve through `serve.run` or `serve run`, and the served-load rehearsal, share one (`shared_ray`), each ending
its own Serve applications."""

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BASE_URL = "http://127.0.0.1:8000"
CONFIGS = [
    "serve_config.yaml",
    "configs/local.yaml",
    "configs/gpu-12gb.yaml",
    "configs/gpu-80gb.yaml",
    "configs/cluster.yaml",
]

# Ray's token authentication writes ~/.ray/auth_token on a plain ray.init(); tests need none of it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def dashboard_metrics() -> set[str]:
    """The metrics the Grafana dashboard queries, as Prometheus names them (`ray_` prefix, no histogram suffix)."""
    import json
    import re

    dashboard = json.loads((REPO / "configs/grafana/vortex-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    names = {name for expr in exprs for name in re.findall(r"\bray_[a-z_]+", expr)}
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


def load_yaml(relative_path: str) -> dict:
    return yaml.safe_load((REPO / relative_path).read_text())


def local_app_config() -> dict:
    return load_yaml("configs/local.yaml")["applications"][0]


def deployment_entry(app: dict, name: str) -> dict:
    """The `deployments:` entry of `name` in an application's config, added if the config has none."""
    entries = app.setdefault("deployments", [])
    entry = next((entry for entry in entries if entry["name"] == name), None)
    if entry is None:
        entries.append(entry := {"name": name})
    return entry


def wait_for_http(url: str, timeout_s: float) -> None:
    import time

    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:  # not up yet: refused, or held while replicas start
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def shared_ray():
    """A local Ray cluster for the test session's `serve.run` modules and in-process rehearsals (a cluster start
    costs seconds of both cores); yields the port its metrics are exported on. Logical CPUs: room for two
    applications at once; a logical GPU: the served-load rehearsal's replicas ask for 0.9."""
    import ray

    metrics_port = free_port()
    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, _metrics_export_port=metrics_port)
    yield metrics_port
    ray.shutdown()


@dataclass
class ServeRun:
    """A `serve run` process and what /readyz answered before its application was ready."""

    process: subprocess.Popen
    not_ready: list  # of requests.Response


@pytest.fixture(scope="module")
def serve_run(shared_ray, tmp_path_factory):
    """`serve run configs/local.yaml` as a user types it (README, Quick start), for one test module, waited for
    until ready; Ctrl-C ends it after the module. It joins the session's Ray cluster (RAY_ADDRESS) instead of
    starting one, so that the module's own actors and handles reach its application: one application start
    serves both the CLI's test and the service's (each costs half a minute of both cores)."""
    import ray
    import requests

    serve_cli = shutil.which("serve", path=str(Path(sys.executable).parent)) or shutil.which("serve")
    log = (tmp_path_factory.mktemp("serve_run") / "serve_run.log").open("w")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    process = subprocess.Popen(
        [serve_cli, "run", "configs/local.yaml"],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        # Ctrl-C works even when the suite runs as a background job, which starts with SIGINT ignored: `serve run`
        # would inherit that, ignore the SIGINT below and be killed after a minute.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_for_http(BASE_URL + "/healthz", timeout_s=180)  # the Ingress answers: alive
        not_ready = []  # /readyz until it answers 200: the generator and verifier have loaded
        deadline = time.monotonic() + 180
        while (answer := requests.get(BASE_URL + "/readyz", timeout=10)).status_code != 200:
            assert time.monotonic() < deadline, f"/readyz did not answer 200 within 180 s: {answer.text}"
            not_ready.append(answer)
            time.sleep(0.5)
        assert answer.json() == {"status": "ready"}
        yield ServeRun(process, not_ready)
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C does: serve run shuts Serve down
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    assert process.returncode is not None


@pytest.fixture(scope="module")
def local_service(serve_run):
    """The CPU profile, as `serve run configs/local.yaml` serves it; its base URL."""
    return BASE_URL


# GPU tests: the full-size architecture at the production default size.
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
SIDE = 512


def report(what: str, value: str) -> None:
    """Print a measurement with the card's name (run GPU tests with -s to see them)."""
    import torch

    print(f"MEASURED [{torch.cuda.get_device_name()}] {what}: {value}", flush=True)


def free_cuda() -> None:
    """Free a test's engine. Dynamo's caches would keep compiled blocks of every engine of the session
    (and hit its recompile limit of 8 across tests): a replica has one engine, a test session several."""
    import gc

    import torch

    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()


def generate(engine, seed: int = 0, **kwargs):
    return engine.generate(PROMPT, seeds=[seed], width=SIDE, height=SIDE, **kwargs)


def assert_same_weights(ours, theirs) -> None:
    """Two engines' transformer and T5 hold the same tensors: names, values to the bit, and what compiled regions are
    keyed on (shape, strides, dtype, ...), so that either engine finds the regions the other saved."""
    import torch

    from deployments.engines.precompiled import weight_facts

    for component in ("transformer", "text_encoder_2"):
        mine, other = getattr(ours.pipe, component), getattr(theirs.pipe, component)
        assert weight_facts(mine) == weight_facts(other)
        for (name, tensor), theirs_tensor in zip(mine.state_dict().items(), other.state_dict().values(), strict=True):
            # float() is exact for every dtype here; fp8 has no equality of its own
            assert torch.equal(tensor.float(), theirs_tensor.float()), name


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Selenium (Debian's `chromium` and `chromium-driver`; `make test` installs them)."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("Chromium is not installed: apt-get install chromium chromium-driver (README, Quick start)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1300"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()
