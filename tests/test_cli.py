"""`serve run configs/local.yaml`, as a user types it, answers real HTTP."""

import base64
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import requests

from conftest import BASE_URL, REPO, wait_for_http


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
    )
    try:
        wait_for_http(BASE_URL + "/healthz", timeout_s=180)
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
