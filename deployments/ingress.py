"""Ingress: the FastAPI front door (no GPU).

It checks the API key and the request, asks the generator for images, has each verified, generates
again with a new seed for every image that fails (up to `serving.max_attempts`), encodes PNGs, and
turns every failure into a clear HTTP answer: 400 bad input, 401 no key, 413 body too large, 422 no
image passed verification, 503 overloaded or out of GPU memory (with Retry-After), 504 too slow.
"""

import asyncio
import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from deployments.api import (
    MAX_SEED,
    Attempt,
    AuthConfig,
    ErrorDetail,
    ErrorResponse,
    GeneratedImage,
    ImageData,
    ImageLimits,
    ImageRequest,
    ImagesResponse,
    InvalidRequestError,
    ServingConfig,
    VerificationFailedError,
)
from deployments.engines.clip import Verification
from deployments.engines.flux import FluxOutOfMemoryError
from deployments.generator import GenerationJob
from deployments.observability import request_id, service_metrics

logger = logging.getLogger("ray.serve")

app = FastAPI(
    title="Vortex Serve",
    description="FLUX.1-schnell text-to-image, every image checked by a dual-CLIP verifier before it is returned.",
    version="0.1.0",
)
GENERATIONS = "/v1/images/generations"
OPEN_PATHS = {"/healthz", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}


class ServiceUnavailableError(RuntimeError):
    """Overload, GPU memory or a lost replica: try again after `retry_after_s`."""


def error_response(status: int, param: str | None, message: str, kind: str, **extra) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, param=param, type=kind), **extra)
    content = body.model_dump(mode="json", exclude=set() if body.attempts else {"attempts"})
    return JSONResponse(status_code=status, content=content)


@app.exception_handler(RequestValidationError)
async def _invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
    """OpenAI-style 400 naming the field, instead of FastAPI's 422 list."""
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        message = f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}"
        return error_response(400, "body", message, "invalid_request_error")
    param = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    return error_response(400, param, f"{param}: {first['msg']}", "invalid_request_error")


@app.exception_handler(InvalidRequestError)
async def _invalid_request(_: Request, exc: InvalidRequestError) -> JSONResponse:
    return error_response(400, exc.field, str(exc), "invalid_request_error")


@app.middleware("http")
async def _guard(request: Request, call_next):
    """API key and body size, before the body is parsed."""
    ingress: Ingress = request.app.state.ingress
    if request.url.path not in OPEN_PATHS and not ingress.authorized(request.headers.get("authorization")):
        response = error_response(401, None, "missing or invalid API key", "authentication_error")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    if request.method == "POST":
        limit = ingress.limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        # A declared size is refused unread; an undeclared (chunked) body is measured once read.
        if (declared.isdigit() and int(declared) > limit) or len(await request.body()) > limit:
            return error_response(413, "body", f"request body must be at most {limit} bytes", "invalid_request_error")
    return await call_next(request)


def load_api_keys(auth: AuthConfig) -> list[bytes]:
    """SHA-256 digests of the configured keys, so comparisons take the same time whatever the length."""
    keys = []
    if auth.keys_env and os.environ.get(auth.keys_env):
        keys += os.environ[auth.keys_env].split(",")
    if auth.keys_file:
        keys += Path(auth.keys_file).read_text().splitlines()
    digests = [hashlib.sha256(key.strip().encode()).digest() for key in keys if key.strip()]
    if not digests and not auth.disabled:
        raise ValueError(
            f"serving.auth: no API keys found (env {auth.keys_env}, file {auth.keys_file}); "
            "set some, or write `disabled: true` to serve without keys"
        )
    return digests


REJECTION_KINDS = {
    "ensemble score": "prompt_mismatch",
    "the distractor": "distractor",
    "content policy": "content_policy",
}


def rejection_kind(reason: str) -> str:
    """A metric label for a verifier reason."""
    return next((kind for prefix, kind in REJECTION_KINDS.items() if reason.startswith(prefix)), "other")


def server_sent_event(payload: dict) -> str:
    return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n"


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)  # 4x faster than the default 6
    return buffer.getvalue()


# Module-level helpers above this line: serve.ingress snapshots the class when it is defined.
@serve.deployment(ray_actor_options={"num_cpus": 0.5})
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        generator: DeploymentHandle,
        verifier: DeploymentHandle,
        limits: ImageLimits,
        serving: ServingConfig | None = None,
    ) -> None:
        self.generator = generator
        self.verifier = verifier
        self.limits = limits
        self.serving = serving or ServingConfig()
        self.api_keys = load_api_keys(self.serving.auth)
        self.metrics = service_metrics()
        app.state.ingress = self

    def authorized(self, header: str | None) -> bool:
        if self.serving.auth.disabled:
            return True
        scheme, _, token = (header or "").partition(" ")
        digest = hashlib.sha256(token.strip().encode()).digest()
        matched = False
        for key in self.api_keys:  # every key is compared: the time says nothing about which keys exist
            matched |= hmac.compare_digest(digest, key)
        return scheme.lower() == "bearer" and matched

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.post(
        GENERATIONS,
        response_model=ImagesResponse,
        responses={
            400: {"model": ErrorResponse, "description": "Invalid request; `error.param` names the field."},
            401: {"model": ErrorResponse, "description": "Missing or invalid API key."},
            413: {"model": ErrorResponse, "description": "Request body too large."},
            422: {"model": ErrorResponse, "description": "No image passed verification; `attempts` has the verdicts."},
            503: {"model": ErrorResponse, "description": "Overloaded or out of GPU memory; see Retry-After."},
            504: {"model": ErrorResponse, "description": "The request took longer than the service allows."},
        },
    )
    async def create_images(self, request: ImageRequest):
        """Generate `n` images for `prompt`, each verified against it, as base64 PNGs.

        With `stream: true` the answer is server-sent events: `vortex.progress` (denoising step i of N,
        verification started) as the work goes, then one `image_generation.completed` per image, or
        one `error` event carrying what the non-streaming answer's status and body would have been.
        """
        if request.stream:
            self.limits.check(request)  # refuse bad input with a plain 400 before the stream starts
            return StreamingResponse(self._server_sent_events(request), media_type="text/event-stream")
        start = time.perf_counter()
        status = 200
        try:
            images = await self.generate(request)
            return ImagesResponse(
                created=int(time.time()), request_id=request_id(), data=[ImageData.from_image(i) for i in images]
            )
        except (ServiceUnavailableError, TimeoutError, VerificationFailedError) as error:
            response = self._error_for(error)
            status = response.status_code
            return response
        finally:
            self.metrics.request_latency.observe(time.perf_counter() - start, tags={"status": str(status)})

    def _error_for(self, error: Exception) -> JSONResponse:
        if isinstance(error, VerificationFailedError):
            return error_response(422, None, str(error), "verification_failed", attempts=error.attempts)
        if isinstance(error, TimeoutError):
            return error_response(
                504, None, f"the request took longer than {self.serving.request_timeout_s} s", "timeout"
            )
        response = error_response(503, None, str(error), "service_unavailable")
        response.headers["Retry-After"] = str(self.serving.retry_after_s)
        return response

    async def _server_sent_events(self, request: ImageRequest) -> AsyncIterator[str]:
        start = time.perf_counter()
        status = 200
        try:
            async for event in self.generate_stream(request):
                if isinstance(event, GeneratedImage):
                    payload = {
                        "type": "image_generation.completed",
                        **ImageData.from_image(event).model_dump(mode="json"),
                    }
                    yield server_sent_event(payload)
                else:
                    yield server_sent_event(event)
        except (ServiceUnavailableError, TimeoutError, VerificationFailedError) as error:
            response = self._error_for(error)
            status = response.status_code
            yield server_sent_event({"type": "error", "status": status, **json.loads(response.body)})
        finally:
            self.metrics.request_latency.observe(time.perf_counter() - start, tags={"status": str(status)})

    async def generate(self, request: ImageRequest | dict) -> list[GeneratedImage]:
        """Handle API: generate and verify images for `request`.

        Call it from your own Ray actors or tasks with
        `serve.get_app_handle("vortex").generate.remote(ImageRequest(prompt=...))`. Raises
        `InvalidRequestError` (a `ValueError` naming the field) for a request the service refuses,
        `VerificationFailedError` when no attempt passed, `ServiceUnavailableError` when overloaded
        or out of GPU memory, and `TimeoutError` past `serving.request_timeout_s`.
        """
        return [event async for event in self.generate_stream(request) if isinstance(event, GeneratedImage)]

    async def generate_stream(self, request: ImageRequest | dict) -> AsyncIterator[dict | GeneratedImage]:
        """Handle API, streamed: progress dicts (`vortex.progress`) as they happen, then each `GeneratedImage`.

        Call it with `handle.options(stream=True).generate_stream.remote(request)`; raises as `generate`.
        """
        if isinstance(request, dict):
            try:
                request = ImageRequest.model_validate(request)
            except ValidationError as exc:
                raise InvalidRequestError.from_validation_error(exc) from None
        width, height, steps = self.limits.check(request)
        async with asyncio.timeout(self.serving.request_timeout_s):
            async for event in self._attempts(request, width, height, steps):
                yield event

    async def _attempts(
        self, request: ImageRequest, width: int, height: int, steps: int
    ) -> AsyncIterator[dict | GeneratedImage]:
        """Generate, verify, and generate again for the images that failed, up to `serving.max_attempts`."""
        n = request.n
        first_seed = secrets.randbelow(MAX_SEED + 1 - n) if request.seed is None else request.seed
        attempts: list[list[Attempt]] = [[] for _ in range(n)]
        passed: dict[int, tuple[int, bytes, Verification]] = {}  # slot -> seed, PNG, verdict
        pending = list(range(n))
        for attempt in range(1, self.serving.max_attempts + 1):
            # Slot i, attempt a uses seed first_seed + i + (a - 1) * n: reproducible, never repeated in a request.
            seeds = [(first_seed + slot + (attempt - 1) * n) % (MAX_SEED + 1) for slot in pending]
            progress = {"type": "vortex.progress", "attempt": attempt, "images": pending}
            pixels = None
            async for event in self._generation(request, seeds, width, height, steps):
                if isinstance(event, np.ndarray):
                    pixels = event
                else:  # {"stage": "queued"} behind another batch group, or {"step": i, "steps": n}
                    yield {**progress, "stage": "denoising", **event}
            yield {**progress, "stage": "verifying"}
            # PNGs are encoded while the verifier works: most images pass, so the two overlap in the latency.
            encoding = asyncio.ensure_future(asyncio.to_thread(lambda images=pixels: [encode_png(i) for i in images]))
            verifications = await self.verifier.verify.remote(pixels, request.prompt, request.include_embeddings)
            pngs = await encoding
            still_failing = []
            for slot, seed, png, verification in zip(pending, seeds, pngs, verifications, strict=True):
                attempts[slot].append(Attempt.of(seed, verification))
                if verification.passed:
                    passed[slot] = (seed, png, verification)
                    continue
                still_failing.append(slot)
                for reason in verification.reasons:
                    self.metrics.rejections.inc(tags={"reason": rejection_kind(reason)})
                for concept in verification.flagged_concepts:
                    self.metrics.withheld.inc(tags={"concept": concept})
            pending = still_failing
            if not pending:
                break
        self.metrics.attempts.observe(max(len(slot) for slot in attempts))
        if pending:
            raise VerificationFailedError(attempts)
        for slot in range(n):
            seed, png, verification = passed[slot]
            yield GeneratedImage(png=png, seed=seed, verification=verification, attempts=attempts[slot])

    async def _generation(
        self, request: ImageRequest, seeds: list[int], width: int, height: int, steps: int
    ) -> AsyncIterator[dict | np.ndarray]:
        """The generator's step events, then its pixels; overload, OOM and lost replicas become 503s."""
        try:
            job = GenerationJob(request.prompt, seeds, width, height, steps, request.negative_prompt)
            async for event in self.generator.options(stream=True).generate_stream.remote(job):
                yield event
        except BackPressureError:
            raise ServiceUnavailableError("the service is at capacity; retry later") from None
        except FluxOutOfMemoryError as error:
            logger.warning("generation ran out of GPU memory: %s", error)
            raise ServiceUnavailableError("the generator ran out of GPU memory for this request; retry later") from None
        except RayActorError:
            logger.warning("a replica died while serving request %s", request_id())
            raise ServiceUnavailableError("a replica failed while serving this request; retry") from None
