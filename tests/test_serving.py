"""Staying up under abuse: API keys, size limits, overload, GPU OOM, a crashed replica, timeouts,
metrics, the client, and a schema-driven fuzz. Real Ray Serve and HTTP on the CPU profile.

Faults are injected the way torch allows, with a forward pre-hook on the real tiny transformer:
images of 1024 latent tokens (512x512) raise CUDA's out-of-memory error, 512 tokens (256x512) run
slowly (past the 4 s request timeout), and a batch of three kills the replica's process. The verifier's
process dies when it is asked to verify the prompt `CRASH_VERIFIER`.
"""

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch

from conftest import BASE_URL, REPO, dashboard_metrics, local_app_config

API_KEY = "test-key-6f1c"
CRASH_VERIFIER = "a prompt the verifier dies of"
URL = BASE_URL + "/v1/images/generations"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Serve's controller checks each replica's health every second (not 10): it replaces a dead one at once. Replicas
# stop 0.2 s after they hold no request (not 2): the module's end waits less.
QUICK_CONTROLLER = {"health_check_period_s": 1, "graceful_shutdown_wait_loop_s": 0.2}


def faulty_generator_class():
    from ray import serve

    from deployments.generator import FluxGenerator

    class FaultyGenerator(FluxGenerator.func_or_class):
        def __init__(self, config, batching, sizes) -> None:
            super().__init__(config, batching, sizes)

            def inject(module, args, kwargs):
                hidden = kwargs["hidden_states"]
                if hidden.shape[0] == 3:
                    os._exit(1)  # the replica's process dies mid-request
                if hidden.shape[1] == 1024:
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
                if hidden.shape[1] == 512:
                    time.sleep(1.25)  # per denoising step: 5 s for the default 4

            self.engine.pipe.transformer.register_forward_pre_hook(inject, with_kwargs=True)

    return serve.deployment(
        FaultyGenerator, name="FluxGenerator", max_ongoing_requests=1, max_queued_requests=2, **QUICK_CONTROLLER
    )


def faulty_verifier_class():
    from ray import serve

    from deployments.verifier import ClipVerifier

    class FaultyVerifier(ClipVerifier.func_or_class):
        def __init__(self, config, batching) -> None:
            super().__init__(config, batching)
            verify = self.engine.verify

            def verify_or_die(batch, include_embeddings=False):
                if any(prompt == CRASH_VERIFIER for _, prompt in batch):
                    os._exit(1)  # the replica's process dies mid-request
                return verify(batch, include_embeddings)

            self.engine.verify = verify_or_die

    return serve.deployment(
        FaultyVerifier, name="ClipVerifier", ray_actor_options={"num_cpus": 0.5}, **QUICK_CONTROLLER
    )


@pytest.fixture(scope="module")
def service(tmp_path_factory, shared_ray):
    from ray import serve

    from deployments.config import AppArgs
    from deployments.ingress import Ingress

    keys = tmp_path_factory.mktemp("keys") / "api_keys"
    keys.write_text(f"another-key\n{API_KEY}\n")
    args = local_app_config()["args"]
    auth = {"keys_env": None, "keys_file": str(keys)}
    args["serving"] = {"auth": auth, "request_timeout_s": 4, "retry_after_s": 7, "max_concurrent_requests": 6}
    args["limits"].update(sizes=["256x256", "512x512", "256x512"], max_body_bytes=4096, max_prompt_bytes=400)
    config = AppArgs.model_validate(args)
    try:
        generator = faulty_generator_class().bind(config.flux, config.batching.generator, config.limits.shapes())
        verifier = faulty_verifier_class().bind(config.verifier, config.batching.verifier)
        app = Ingress.options(**QUICK_CONTROLLER).bind(generator, verifier, config.limits, config.serving)
        serve.run(app, name="vortex", route_prefix="/")
        yield shared_ray  # the metrics port
    finally:
        serve.shutdown()


def post(body: dict, headers: dict | None = AUTH, **kwargs) -> requests.Response:
    return requests.post(URL, json=body, headers=headers, timeout=60, **kwargs)


SMALL = {"prompt": "a paper boat", "size": "256x256"}


@pytest.mark.parametrize(
    "headers",
    [None, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}, {"Authorization": f"Basic {API_KEY}"}],
    ids=["missing", "wrong", "no-scheme", "basic"],
)
def test_requests_without_a_valid_key_get_401_and_learn_nothing(service, headers):
    response = post(SMALL, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"] == {
        "message": "missing or invalid API key",
        "type": "authentication_error",
        "param": None,
        "code": None,
    }


def test_any_configured_key_is_accepted_and_health_needs_none(service):
    assert post(SMALL).status_code == 200
    assert post(SMALL, headers={"Authorization": "bearer another-key"}).status_code == 200
    assert requests.get(BASE_URL + "/healthz", timeout=10).status_code == 200


def test_oversized_bodies_and_prompts_are_refused(service):
    response = requests.post(URL, data=b'{"prompt": "' + b"a" * 5000 + b'"}', headers=AUTH, timeout=30)
    assert response.status_code == 413 and response.json()["error"]["param"] == "body"
    emoji = post({**SMALL, "prompt": "🦊" * 101})  # 101 characters, 404 bytes
    assert emoji.status_code == 400 and "bytes" in emoji.json()["error"]["message"]


def test_generator_out_of_memory_is_a_503_and_the_replica_keeps_serving(service):
    response = post({**SMALL, "size": "512x512"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert "GPU memory" in response.json()["error"]["message"]
    assert post(SMALL).status_code == 200


def test_a_slow_request_times_out_with_504(service):
    start = time.monotonic()
    response = post({**SMALL, "size": "256x512"})
    assert response.status_code == 504 and "longer than 4" in response.json()["error"]["message"]
    assert time.monotonic() - start < 7
    time.sleep(2)  # let the slow generation finish before the next test


def test_overload_answers_503_with_retry_after_quickly(service):
    """Bursts of 12: the generator takes 1 and queues 2, the Ingress admits 6 (`max_concurrent_requests`).
    Which limit a request meets depends on timing, so bursts go on until both have answered (one, mostly)."""
    messages = set()
    for _ in range(5):
        bodies = [{**SMALL, "seed": i} for i in range(12)]
        with ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(lambda body: (time.monotonic(), post(body), time.monotonic()), bodies))
        rejected = [(start, r, end) for start, r, end in responses if r.status_code == 503]
        assert rejected and any(r.status_code == 200 for _, r, _ in responses)
        for start, response, end in rejected:
            assert response.headers["retry-after"] == "7" and "capacity" in response.json()["error"]["message"]
            assert end - start < 5
        messages |= {response.json()["error"]["message"] for _, response, _ in rejected}
        if len(messages) == 2:
            break
    assert messages == {
        "the service is at capacity (FluxGenerator); retry later",  # the generator's queue is full
        "the service is at capacity; retry later",  # the Ingress admits no more
    }


def test_metrics_reach_prometheus(service):
    post(SMALL)
    wanted = ["ray_vortex_request_latency_seconds", "ray_vortex_batch_latency_seconds", "ray_vortex_attempts"]
    statuses = ['status="503"', 'status="200"']  # the module's refusals and answers, exported every few seconds
    # Serve's own metrics on the Grafana dashboard are ones Ray 2.60 exports (each process pushes its own,
    # periodically: early in a module some have not arrived yet).
    serve_metrics = {name for name in dashboard_metrics() if name.startswith("ray_serve_")}
    assert serve_metrics

    def missing(text: str) -> list[str]:
        return [name for name in wanted + statuses if name not in text] + [
            name for name in serve_metrics if not re.search(rf"^{name}", text, re.M)
        ]

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{service}/metrics", timeout=10).text
        if not missing(text):
            break
        time.sleep(2)
    assert not missing(text), missing(text)
    assert 'deployment="FluxGenerator"' in text and 'deployment="ClipVerifier"' in text


def test_client_saves_the_image_and_reports_errors(service, tmp_path):
    out = tmp_path / "boat.png"
    command = [sys.executable, "-m", "deployments.client", "a paper boat", "-o", str(out), "--size", "256x256"]
    ok = subprocess.run(
        [*command, "--seed", "4"],
        env={**os.environ, "VORTEX_API_KEY": API_KEY},
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert ok.returncode == 0, ok.stderr
    assert out.read_bytes().startswith(b"\x89PNG") and "seed 4" in ok.stdout and "passed" in ok.stdout
    webp = tmp_path / "boat.webp"
    streamed = subprocess.run(
        [*command[:4], "-o", str(webp), "--size", "256x256", "--stream", "--format", "webp", "--partial-images", "1"],
        env={**os.environ, "VORTEX_API_KEY": API_KEY},
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert streamed.returncode == 0, streamed.stderr
    # A progress bar (tqdm) over the 4 steps, then the verification; the preview after step 2 saved beside the image.
    assert "attempt 1" in streamed.stderr and "4/4" in streamed.stderr and "verifying" in streamed.stderr
    assert webp.read_bytes()[8:12] == b"WEBP"
    assert (tmp_path / "boat.partial0.0.webp").read_bytes()[8:12] == b"WEBP"
    refused = subprocess.run(command, env={**os.environ, "VORTEX_API_KEY": "nope"}, capture_output=True, text=True)
    assert refused.returncode != 0 and "401" in refused.stderr and "missing or invalid API key" in refused.stderr


def test_the_playground_asks_for_the_api_key_and_then_generates(service, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(BASE_URL + "/")  # the page itself needs no key
    browser.find_element(By.ID, "prompt").send_keys("a paper boat")
    browser.find_element(By.ID, "submit").click()
    key = WebDriverWait(browser, 30).until(
        lambda page: page.find_element(By.ID, "api-key").is_displayed() and page.find_element(By.ID, "api-key")
    )
    assert browser.find_element(By.ID, "error").text.startswith("401: missing or invalid API key")
    key.send_keys(API_KEY, Keys.ENTER)  # Enter in the key field sends the request again, with the key
    WebDriverWait(browser, 60).until(lambda page: page.find_elements(By.CSS_SELECTOR, "#results figure.result img"))
    assert not browser.find_element(By.ID, "error").is_displayed()


def test_client_help_lists_every_request_field():
    from deployments.api import ImageRequest

    shown = subprocess.run(
        [sys.executable, "-m", "deployments.client", "--help"], capture_output=True, text=True, cwd=REPO
    ).stdout
    options = {name: f"--{name.replace('_', '-')}" for name in ImageRequest.model_fields if name != "prompt"}
    assert [option for option in options.values() if option not in shown] == [] and "prompt" in shown


def test_fuzzed_invalid_requests_never_get_a_5xx(service):
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(BASE_URL + "/openapi.json")
    operation = schema["/v1/images/generations"]["POST"]
    strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE)

    @given(case=strategy)
    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def invalid_request_is_a_client_error(case):
        response = case.call(base_url=BASE_URL, headers=AUTH, timeout=60)
        assert response.status_code < 500, (case.body, response.status_code, response.text[:300])

    invalid_request_is_a_client_error()


def stream_events(body: dict, verifying: threading.Event) -> tuple[int, list[dict]]:
    """A streamed request's status and events; `verifying` is set when its images reach the verifier."""
    events = []
    with requests.post(URL, json={**body, "stream": True}, headers=AUTH, stream=True, timeout=60) as response:
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
                if events[-1].get("stage") == "verifying":
                    verifying.set()
    verifying.set()
    return response.status_code, events


def test_replicas_that_die_mid_request_end_their_requests_clearly_and_are_replaced(service):
    """The verifier dies under a streamed request and the generator under another, with requests in flight:
    each ends with an image or a JSON error, the stream with an error event, and both replicas come back."""
    verifying = threading.Event()
    with ThreadPoolExecutor(max_workers=4) as pool:
        streamed = pool.submit(stream_events, {**SMALL, "prompt": CRASH_VERIFIER}, verifying)
        assert verifying.wait(timeout=30)
        generator_killer = pool.submit(post, {**SMALL, "n": 3})
        # The killer first: the generator holds 1 request and queues 2, and the streamed request's call may still
        # hold its slot; one of the others may then meet the full queue (allowed below), the killer must not.
        time.sleep(0.5)
        others = [pool.submit(post, {**SMALL, "seed": seed}) for seed in (1, 2)]
        status, events = streamed.result()
        assert status == 200 and events[-1]["type"] == "error" and events[-1]["status"] == 503
        assert "a ClipVerifier replica failed" in events[-1]["error"]["message"]
        killed = generator_killer.result()
        assert killed.status_code == 503 and killed.headers["retry-after"] == "7"
        assert "a FluxGenerator replica failed" in killed.json()["error"]["message"]
        for other in (future.result() for future in others):  # served, or failed with a JSON error
            assert other.status_code == 200 or other.json()["error"]["type"] in ("service_unavailable", "timeout")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and post(SMALL).status_code != 200:
        time.sleep(0.5)
    image = post({**SMALL, "seed": 9})
    assert image.status_code == 200
    assert base64.b64decode(image.json()["data"][0]["b64_json"]).startswith(b"\x89PNG")
    status, events = stream_events(SMALL, threading.Event())
    assert status == 200 and events[-1]["type"] == "image_generation.completed"
