"""The CPU profile over real HTTP and through a DeploymentHandle from another Ray actor, served by
`serve run configs/local.yaml` as a user types it (fixture `serve_run`)."""

import base64
import io

import pytest
import ray
import requests
from PIL import Image

from conftest import BASE_URL
from deployments.api import ImageRequest, InvalidRequestError

GENERATIONS = "/v1/images/generations"


def post(base_url: str, body: dict | str) -> requests.Response:
    if isinstance(body, str):
        return requests.post(
            base_url + GENERATIONS, data=body, headers={"content-type": "application/json"}, timeout=60
        )
    return requests.post(base_url + GENERATIONS, json=body, timeout=60)


def decode_image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_serve_run_local_profile_answers_http(serve_run):
    """`serve run configs/local.yaml` answers real HTTP: alive at once, ready once the models have loaded."""
    assert serve_run.not_ready  # the Ingress answers seconds before the generator has loaded diffusers and Flux
    assert all(answer.status_code == 503 and answer.headers["retry-after"] for answer in serve_run.not_ready)
    assert all("not ready: no running replica of" in a.json()["error"]["message"] for a in serve_run.not_ready)
    response = requests.post(BASE_URL + GENERATIONS, json={"prompt": "a paper boat", "seed": 3}, timeout=60)
    assert response.status_code == 200, response.text
    assert base64.b64decode(response.json()["data"][0]["b64_json"]).startswith(b"\x89PNG")


def test_generation_returns_verified_pngs(local_service):
    response = post(local_service, {"prompt": "a red fox in the snow", "n": 2, "size": "256x256", "seed": 41})
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["created"], int)
    assert [item["seed"] for item in body["data"]] == [41, 42]
    for item in body["data"]:
        image = decode_image(item["b64_json"])
        assert (image.format, image.size, image.mode) == ("PNG", (256, 256), "RGB")
        verification = item["verification"]
        assert set(verification["scores"]) == {"tiny-clip-a", "tiny-clip-b"}
        assert set(verification["calibrated_scores"]) == {"tiny-clip-a", "tiny-clip-b"}
        assert all(-1.0 <= score <= 1.0 for score in verification["scores"].values())
        assert isinstance(verification["ensemble_score"], float)
        assert verification["passed"] is True  # the CPU profile's calibration accepts random-weight scores
        assert verification["reasons"] == [] and verification["flagged_concepts"] == []
        assert verification["embeddings"] is None
        assert [attempt["seed"] for attempt in item["attempts"]] == [item["seed"]]  # passed at once
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["data"][0]["b64_json"] != body["data"][1]["b64_json"]


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_jpeg_and_webp_on_request_smaller_at_lower_quality(local_service, output_format):
    request = {"prompt": "a red fox in the snow", "size": "256x256", "seed": 5, "output_format": output_format}
    best = post(local_service, request).json()
    smaller = post(local_service, {**request, "output_compression": 30}).json()
    assert (best["output_format"], best["size"]) == (output_format, "256x256")
    image = decode_image(best["data"][0]["b64_json"])
    assert (image.format, image.size) == ({"jpeg": "JPEG", "webp": "WEBP"}[output_format], (256, 256))
    assert len(smaller["data"][0]["b64_json"]) < len(best["data"][0]["b64_json"])


def test_same_seed_and_prompt_give_identical_png_bytes(local_service):
    request = {"prompt": "a lighthouse at dusk", "seed": 1234}
    first, second = post(local_service, request).json(), post(local_service, request).json()
    assert first["data"][0]["b64_json"] == second["data"][0]["b64_json"]
    other_seed = post(local_service, {**request, "seed": 1235}).json()
    assert other_seed["data"][0]["b64_json"] != first["data"][0]["b64_json"]


def test_defaults_and_random_seed(local_service):
    body = post(local_service, {"prompt": "a teapot"}).json()
    assert decode_image(body["data"][0]["b64_json"]).size == (512, 512)
    assert 0 <= body["data"][0]["seed"] < 2**32


def test_negative_prompt_and_steps_change_the_image(local_service):
    base = {"prompt": "a city skyline", "seed": 5, "size": "256x256"}
    plain = post(local_service, base).json()["data"][0]["b64_json"]
    negative = post(local_service, {**base, "negative_prompt": "fog"}).json()["data"][0]["b64_json"]
    two_steps = post(local_service, {**base, "num_inference_steps": 2}).json()["data"][0]["b64_json"]
    assert len({plain, negative, two_steps}) == 3


def test_healthz_readyz_and_openapi(local_service):
    assert requests.get(local_service + "/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(local_service + "/readyz", timeout=10).json() == {"status": "ready"}
    spec = requests.get(local_service + "/openapi.json", timeout=10).json()
    operation = spec["paths"][GENERATIONS]["post"]
    assert "400" in operation["responses"] and "200" in operation["responses"]
    request_schema = spec["components"]["schemas"]["ImageRequest"]["properties"]
    assert {"prompt", "n", "size", "response_format", "seed", "negative_prompt", "num_inference_steps"} <= set(
        request_schema
    )
    assert requests.get(local_service + "/docs", timeout=10).status_code == 200


BAD_REQUESTS = [
    ({"n": 1}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   \n\t "}, "prompt"),
    ({"prompt": 42}, "prompt"),
    ({"prompt": "x" * 2001}, "prompt"),
    ({"prompt": "a cat", "size": "1024x1024"}, "size"),
    ({"prompt": "a cat", "size": "big"}, "size"),
    ({"prompt": "a cat", "n": 0}, "n"),
    ({"prompt": "a cat", "n": 5}, "n"),
    ({"prompt": "a cat", "n": "2"}, "n"),
    ({"prompt": "a cat", "n": 1.5}, "n"),
    ({"prompt": "a cat", "num_inference_steps": 0}, "num_inference_steps"),
    ({"prompt": "a cat", "num_inference_steps": 9}, "num_inference_steps"),
    ({"prompt": "a cat", "seed": -1}, "seed"),
    ({"prompt": "a cat", "seed": 2**32}, "seed"),
    ({"prompt": "a cat", "seed": "abc"}, "seed"),
    ({"prompt": "a cat", "response_format": "url"}, "response_format"),
    ({"prompt": "a cat", "background": "transparent"}, "background"),
    ({"prompt": "a cat", "quality": "ultra"}, "quality"),
    ({"prompt": "a cat", "moderation": "off"}, "moderation"),
    ({"prompt": "a cat", "partial_images": 4}, "partial_images"),
    ({"prompt": "a cat", "output_format": "gif"}, "output_format"),
    ({"prompt": "a cat", "output_format": "jpeg", "output_compression": 101}, "output_compression"),
    ({"prompt": "a cat", "output_compression": 50}, "output_compression"),  # png is lossless
    ({"prompt": "a cat", "negative_prompt": ["fog"]}, "negative_prompt"),
    ({"prompt": "a cat", "steps": 4}, "steps"),
    ('{"prompt": "a cat",', "body"),
    ("[1, 2, 3]", "body"),
    ("not json at all", "body"),
]


@pytest.mark.parametrize(("body", "field"), BAD_REQUESTS, ids=[str(case[0])[:40] for case in BAD_REQUESTS])
def test_bad_input_is_a_400_naming_the_field(local_service, body, field):
    response = post(local_service, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field
    assert error["type"] == "invalid_request_error"
    assert error["message"]


@pytest.mark.parametrize(("method", "path", "status"), [("GET", GENERATIONS, 405), ("POST", "/v1/nope", 404)])
def test_wrong_methods_and_paths_get_openai_style_json(local_service, method, path, status):
    response = requests.request(method, local_service + path, json={"prompt": "a cat"}, timeout=10)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and f"{method} {path}" in error["message"]


def test_service_stays_healthy_after_bad_input(local_service):
    for body, _ in BAD_REQUESTS:
        post(local_service, body)
    assert requests.get(local_service + "/healthz", timeout=10).status_code == 200
    assert post(local_service, {"prompt": "still here", "size": "256x256"}).status_code == 200


@ray.remote(num_cpus=0)
class HandleCaller:
    """A user's own Ray actor calling the application through its DeploymentHandle."""

    def generate(self, request: ImageRequest | dict):
        return self.generate_from("vortex", request)

    def generate_from(self, app_name: str, request: ImageRequest | dict):
        from ray import serve

        return serve.get_app_handle(app_name).generate.remote(request).result(timeout_s=120)

    def stream(self, request: ImageRequest) -> list[str]:
        from ray import serve

        from deployments.api import GeneratedImage

        handle = serve.get_app_handle("vortex").options(stream=True)
        events = []
        for event in handle.generate_stream.remote(request):
            if isinstance(event, GeneratedImage):
                events.append(f"image seed {event.seed}")
            elif event["stage"] == "denoising":
                events.append(f"denoising {event['step']}/{event['steps']}")
            else:
                events.append(event["stage"])
        return events

    def verification_failure(self, app_name: str, request: ImageRequest) -> list[int]:
        from deployments.api import VerificationFailedError

        try:
            self.generate_from(app_name, request)
        except VerificationFailedError as error:
            return [len(slot) for slot in error.attempts]
        return []

    def field_refused(self, request: ImageRequest | dict) -> str | None:
        """The field named by the `InvalidRequestError` (a `ValueError`) the handle raised, if any."""
        try:
            self.generate(request)
        except InvalidRequestError as error:
            assert isinstance(error, ValueError)
            return error.field
        return None


def test_handle_call_from_a_ray_actor_returns_typed_images(local_service):
    caller = HandleCaller.remote()
    images = ray.get(caller.generate.remote(ImageRequest(prompt="a lighthouse at dusk", seed=1234, n=2)))
    assert [image.seed for image in images] == [1234, 1235]
    assert Image.open(io.BytesIO(images[0].image)).size == (512, 512) and images[0].output_format == "png"
    assert set(images[0].verification.scores) == {"tiny-clip-a", "tiny-clip-b"}
    # The handle and HTTP paths produce the same bytes for the same request.
    http = post(local_service, {"prompt": "a lighthouse at dusk", "seed": 1234, "n": 2}).json()
    assert [base64.b64decode(item["b64_json"]) for item in http["data"]] == [image.image for image in images]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (ImageRequest(prompt="a cat", size="13x13"), "size"),
        (ImageRequest(prompt="a cat", n=9), "n"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "a cat", "seed": "abc"}, "seed"),
    ],
)
def test_handle_callers_get_a_typed_error_naming_the_field(local_service, request_, field):
    assert ray.get(HandleCaller.remote().field_refused.remote(request_)) == field


def test_embeddings_on_request(local_service):
    body = post(local_service, {"prompt": "a teapot", "size": "256x256", "include_embeddings": True}).json()
    embeddings = body["data"][0]["verification"]["embeddings"]
    assert set(embeddings) == {"tiny-clip-a", "tiny-clip-b"} and len(embeddings["tiny-clip-a"]) == 32


def test_concurrent_verifications_share_a_batch(local_service):
    """Verification requests that arrive together go through the CLIP models as one batch."""
    import numpy as np
    from ray import serve

    verifier = serve.get_deployment_handle("ClipVerifier", app_name="vortex")
    before = verifier.batch_histogram.remote().result()
    images = np.random.default_rng(0).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    responses = [verifier.verify.remote(images, f"a boat number {i}", False) for i in range(6)]
    verdicts = [response.result()[0] for response in responses]
    assert all(set(verdict.scores) == {"tiny-clip-a", "tiny-clip-b"} for verdict in verdicts)
    after = verifier.batch_histogram.remote().result()
    new_batches = {size: after[size] - before.get(size, 0) for size in after if after[size] > before.get(size, 0)}
    assert sum(size * count for size, count in new_batches.items()) == 6
    assert max(new_batches) > 1


def test_concurrent_requests_share_a_generator_forward_pass(local_service):
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from ray import serve

    generator = serve.get_deployment_handle("FluxGenerator", app_name="vortex")
    before = generator.batch_histogram.remote().result()
    bodies = [{"prompt": f"boat number {i}", "size": "256x256", "seed": i} for i in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        batched = list(pool.map(lambda body: post(local_service, body), bodies))
    after = generator.batch_histogram.remote().result()
    assert max(size for size in after if after[size] > before.get(size, 0)) > 1
    for body, response in zip(bodies, batched, strict=True):
        alone = post(local_service, body).json()["data"][0]["b64_json"]
        together = response.json()["data"][0]["b64_json"]
        a, b = (np.asarray(decode_image(image), dtype=float) for image in (alone, together))
        assert np.abs(a - b).mean() < 1.0  # the same image; a batch may change the last bits


def test_requests_arriving_while_the_generator_is_busy_share_its_next_batch(local_service):
    """A batch is formed when the engine is free, so every request waiting by then joins it."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    generator = serve.get_deployment_handle("FluxGenerator", app_name="vortex")
    before = generator.batch_histogram.remote().result()
    with ThreadPoolExecutor(max_workers=5) as pool:
        busy = pool.submit(post, local_service, {"prompt": "four slow images", "size": "512x512", "n": 4, "seed": 1})
        time.sleep(0.3)  # the four images (over a second on the CPU profile) are being generated
        waiting = []
        for i in range(4):  # one by one: a batch formed on arrival would hold one each
            waiting.append(pool.submit(post, local_service, {"prompt": f"arrived {i}", "size": "256x256", "seed": i}))
            time.sleep(0.1)
        assert all(future.result().status_code == 200 for future in [busy, *waiting])
    after = generator.batch_histogram.remote().result()
    new_batches = {size: after[size] - before.get(size, 0) for size in after if after[size] > before.get(size, 0)}
    assert new_batches == {1: 1, 4: 1}


@pytest.fixture(scope="module")
def strict_service(local_service):
    """A second app whose content policy flags everything, allowing two attempts per image. It has a verifier
    of its own and calls the first app's generator (a handle is an ordinary argument)."""
    from ray import serve

    from conftest import local_app_config
    from deployments.config import AppArgs
    from deployments.ingress import Ingress
    from deployments.verifier import ClipVerifier

    args = local_app_config()["args"]
    args["verifier"]["policy"] = {"concepts": [{"name": "everything", "captions": ["anything"], "threshold": -2.0}]}
    args["serving"]["max_attempts"] = 2
    config = AppArgs.model_validate(args)
    generator = serve.get_deployment_handle("FluxGenerator", app_name="vortex")
    verifier = ClipVerifier.bind(config.verifier, config.batching.verifier)
    serve.run(Ingress.bind(generator, verifier, config.limits, config.serving), name="strict", route_prefix="/strict")
    yield local_service + "/strict"
    # Not deleted here: Ctrl-C on `serve run` shuts Serve down, this application with the profile's, side by side.


def test_flagged_images_are_never_sent_and_the_422_says_why(strict_service):
    assert requests.get(strict_service + "/readyz", timeout=10).json() == {"status": "ready"}  # another app's generator
    response = post(strict_service, {"prompt": "a quiet harbour", "size": "256x256", "n": 2, "seed": 10})
    assert response.status_code == 422
    body = response.json()
    assert "b64_json" not in response.text
    assert body["error"]["type"] == "verification_failed" and "content policy" in body["error"]["message"]
    assert [[attempt["seed"] for attempt in slot] for slot in body["attempts"]] == [[10, 12], [11, 13]]
    for slot in body["attempts"]:
        assert all(reason.startswith("content policy: everything") for a in slot for reason in a["reasons"])


def test_handle_callers_get_a_typed_verification_error(strict_service):
    outcome = ray.get(HandleCaller.remote().verification_failure.remote("strict", ImageRequest(prompt="a harbour")))
    assert outcome == [2]  # one image slot, two attempts, no pixels


def server_sent_events(response: requests.Response) -> list[dict]:
    import json

    return [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]


def test_streaming_reports_progress_in_order_then_the_images(local_service):
    body = {"prompt": "a windmill", "size": "256x256", "seed": 3, "n": 2, "num_inference_steps": 3}
    response = requests.post(local_service + GENERATIONS, json={**body, "stream": True}, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = server_sent_events(response)
    stages = [(e["stage"], e.get("step")) for e in events if e["type"] == "vortex.progress"]
    assert stages == [("denoising", 1), ("denoising", 2), ("denoising", 3), ("verifying", None)]
    completed = [e for e in events if e["type"] == "image_generation.completed"]
    assert [e["seed"] for e in completed] == [3, 4] and events[-1]["type"] == "image_generation.completed"
    assert {e["output_format"] for e in completed} == {"png"}
    assert not [e for e in events if e["type"] == "image_generation.partial_image"]  # none asked for
    plain = post(local_service, body).json()["data"]
    assert [e["b64_json"] for e in completed] == [item["b64_json"] for item in plain]


def openai_client(base_url: str):
    from openai import OpenAI

    return OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)


def test_the_official_openai_client_sends_every_field_and_gets_typed_images(local_service):
    client = openai_client(local_service)
    plain = client.images.generate(prompt="a paper boat")
    # auto size: the first offered; auto quality: the default steps (4, high)
    assert (plain.size, plain.quality, plain.background, plain.output_format) == ("512x512", "high", "opaque", "png")
    assert decode_image(plain.data[0].b64_json).size == (512, 512)
    assert plain.usage.output_tokens == 32 * 32 and plain.usage.input_tokens_details.text_tokens > 0

    fields = {"prompt": "a paper boat at dawn", "size": "512x512", "output_format": "webp", "output_compression": 70}
    every = client.images.generate(
        **fields,
        model="flux.1-schnell",
        n=2,
        quality="low",
        style="natural",
        background="opaque",
        moderation="low",
        partial_images=2,  # without stream: ignored
        response_format="b64_json",
        user="someone",
        safety_identifier="a-hash",
        complexity="low",
        stream=False,
        extra_body={"seed": 7},
    )
    assert (every.size, every.quality, every.output_format, len(every.data)) == ("512x512", "low", "webp", 2)
    assert all(
        decode_image(d.b64_json).format == "WEBP" and decode_image(d.b64_json).size == (512, 512) for d in every.data
    )
    assert every.usage.output_tokens == 2 * 32 * 32 and every.usage.total_tokens > every.usage.output_tokens
    high = client.images.generate(**fields, quality="high", extra_body={"seed": 7})
    assert high.quality == "high" and high.data[0].b64_json != every.data[0].b64_json  # 4 steps, not 1


def test_the_openai_client_streams_partial_images_then_the_images(local_service):
    request = {"prompt": "a windmill", "size": "256x256", "n": 2, "output_format": "jpeg"}
    stream = openai_client(local_service).images.generate(
        **request, stream=True, partial_images=2, extra_body={"seed": 3}
    )
    events = [event for event in stream if event.type.startswith("image_generation.")]
    partial = [event for event in events if event.type == "image_generation.partial_image"]
    completed = [event for event in events if event.type == "image_generation.completed"]
    # Two previews of each image (after steps 1 and 3 of 4), then the two images.
    assert [(e.to_dict()["image_index"], e.partial_image_index) for e in partial] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert events[-2:] == completed
    for event in partial + completed:
        image = decode_image(event.b64_json)
        assert (image.format, image.size, event.size, event.quality) == ("JPEG", (256, 256), "256x256", "high")
    assert completed[0].usage.output_tokens == 16 * 16
    # Previews change nothing: the same request without them draws the same images.
    plain = post(local_service, {**request, "seed": 3}).json()["data"]
    assert [event.b64_json for event in completed] == [item["b64_json"] for item in plain]


def test_a_stream_that_fails_ends_with_an_error_event(strict_service):
    response = requests.post(strict_service + GENERATIONS, json={"prompt": "a kite", "stream": True}, timeout=60)
    events = server_sent_events(response)
    assert events[-1]["type"] == "error" and events[-1]["status"] == 422
    assert events[-1]["error"]["type"] == "verification_failed" and len(events[-1]["attempts"][0]) == 2
    assert [e["attempt"] for e in events if e.get("stage") == "verifying"] == [1, 2]


def test_handle_callers_can_stream_the_same_events(local_service):
    events = ray.get(HandleCaller.remote().stream.remote(ImageRequest(prompt="a windmill", size="256x256", seed=3)))
    assert events[:4] == ["denoising 1/4", "denoising 2/4", "denoising 3/4", "denoising 4/4"]
    assert events[4:] == ["verifying", "image seed 3"]


def replica_process_maps(deployment: str) -> str:
    """The shared libraries mapped into the local service's replica process of `deployment` (Linux)."""
    import psutil

    title = f"ServeReplica:vortex:{deployment}"
    pids = [p.pid for p in psutil.process_iter(["cmdline"]) if title in " ".join(p.info["cmdline"] or [])]
    assert len(pids) == 1, (title, pids)
    with open(f"/proc/{pids[0]}/maps") as maps:
        return maps.read()


def test_the_ingress_process_runs_without_the_model_stack(local_service):
    """The CPU-only Ingress never imports an engine: torch's library is not even loaded in its process."""
    assert post(local_service, {"prompt": "a lighthouse", "size": "256x256"}).status_code == 200
    assert "libtorch" in replica_process_maps("FluxGenerator")  # the check can see torch where it is
    assert "libtorch" not in replica_process_maps("Ingress")


def test_the_playground_makes_an_image_with_the_keyboard_and_shows_its_verification(local_service, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(local_service + "/")
    Select(browser.find_element(By.ID, "size")).select_by_value("256x256")
    browser.find_element(By.ID, "seed").send_keys("7")
    prompt = browser.find_element(By.ID, "prompt")
    prompt.send_keys("a lighthouse at dusk")
    prompt.send_keys(Keys.CONTROL, Keys.ENTER)  # submits from the keyboard
    image = WebDriverWait(browser, 60).until(
        lambda page: page.find_element(By.CSS_SELECTOR, "#results figure.result img[src^='data:image/png']")
    )
    WebDriverWait(browser, 10).until(lambda page: page.execute_script("return arguments[0].complete", image))
    assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image) == [256, 256]
    shown = {
        row.get_attribute("data-model"): float(row.get_attribute("data-score"))
        for row in browser.find_elements(By.CSS_SELECTOR, "#results tr[data-model]")
    }
    answer = post(local_service, {"prompt": "a lighthouse at dusk", "size": "256x256", "seed": 7}).json()
    assert shown == pytest.approx(answer["data"][0]["verification"]["scores"])  # the same image, verified alike
    panel = browser.find_element(By.CSS_SELECTOR, "#results figcaption").text
    assert "passed" in panel and "seed 7" in panel and "Attempts" in panel
    assert browser.find_element(By.ID, "status").text == "Done: 1 image(s)"
    browser.save_screenshot(str(tmp_path / "playground.png"))


def test_the_playground_shows_a_refused_request_on_a_narrow_screen(local_service, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(380, 900)
    browser.get(local_service + "/")
    browser.execute_script("document.getElementById('prompt').value = 'x'.repeat(2001)")  # over limits.max_prompt_chars
    browser.find_element(By.ID, "submit").click()
    error = WebDriverWait(browser, 30).until(
        lambda page: page.find_element(By.ID, "error") if page.find_element(By.ID, "error").is_displayed() else None
    )
    assert error.text.startswith("400: prompt: must be at most 2000 characters")
    assert browser.find_element(By.ID, "results").text == ""
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth"
    )  # no sideways scroll
    browser.save_screenshot(str(tmp_path / "playground-error.png"))
