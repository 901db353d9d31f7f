"""`serve run configs/local.yaml`, as a user types it, answers real HTTP: alive at once, ready once the
models have loaded."""

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from conftest import BASE_URL, REPO, wait_for_http


def wait_until_ready(timeout_s: float) -> list[requests.Response]:
    """Poll `/readyz` until it answers 200; returns the answers before that."""
    deadline = time.monotonic() + timeout_s
    answers = []
    while time.monotonic() < deadline:
        answer = requests.get(BASE_URL + "/readyz", timeout=10)
        if answer.status_code == 200:
            assert answer.json() == {"status": "ready"}
            return answers
        answers.append(answer)
        time.sleep(0.5)
    raise TimeoutError(f"/readyz did not answer 200 within {timeout_s} s: {answers[-1].text}")


def test_serve_run_local_profile_answers_http(tmp_path):
    serve_cli = shutil.which("serve", path=str(Path(sys.executable).parent)) or shutil.which("serve")
    log = (tmp_path / "serve_run.log").open("w")
    process = subprocess.Popen(
        [serve_cli, "run", "configs/local.yaml"],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        start_new_session=True,
        # Ctrl-C works even when the suite runs as a background job, which starts with SIGINT ignored: `serve run`
        # would inherit that, ignore the SIGINT below and be killed after a minute.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_for_http(BASE_URL + "/healthz", timeout_s=180)  # the Ingress answers: alive
        not_ready = wait_until_ready(timeout_s=180)  # the generator and verifier have loaded
        assert not_ready  # the Ingress answers seconds before the generator has loaded diffusers and Flux
        assert all(answer.status_code == 503 and answer.headers["retry-after"] for answer in not_ready)
        assert all("not ready: no running replica of" in answer.json()["error"]["message"] for answer in not_ready)
        response = requests.post(
            BASE_URL + "/v1/images/generations", json={"prompt": "a paper boat", "seed": 3}, timeout=60
        )
        assert response.status_code == 200, response.text
        assert base64.b64decode(response.json()["data"][0]["b64_json"]).startswith(b"\x89PNG")
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C does: serve run shuts down its own Ray instance
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    assert process.returncode is not None
