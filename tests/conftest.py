"""Shared fixtures. Tests that need Ray start their own local cluster and end only that: the modules that
serve through `serve.run` share one (`shared_ray`), each ending its own Serve applications."""

import os
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
    """A local Ray cluster for the test session's `serve.run` modules (a cluster start costs seconds of both
    cores); yields the port its metrics are exported on. Logical CPUs: room for two applications at once."""
    import ray

    metrics_port = free_port()
    ray.init(address="local", num_cpus=4, include_dashboard=False, _metrics_export_port=metrics_port)
    yield metrics_port
    ray.shutdown()


@pytest.fixture(scope="module")
def local_service(shared_ray):
    """The CPU profile served by `serve.run`, for one test module."""
    from ray import serve

    from deployments.app import build_app
    from deployments.config import AppArgs

    config = local_app_config()
    try:
        # The YAML's `deployments:` options reach replicas through `serve run`/`serve deploy` (see
        # test_cli.py); here the code's defaults apply, which fit the same 2 CPUs.
        app = build_app(AppArgs.model_validate(config["args"]))
        serve.run(app, name=config["name"], route_prefix=config["route_prefix"])
        yield BASE_URL
    finally:
        serve.shutdown()


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
