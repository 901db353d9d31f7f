"""Ingress: the FastAPI front door (no GPU, no model stack). Routes to `serving.ImageService`.

It checks the API key and the body size, lets FastAPI validate the request, and turns every error
into an OpenAI-style JSON answer in one place (`error_response`): 400 bad input, 401 no key, 404/405
no such route, 413 body too large, 422 no image passed verification, 503 overloaded, out of GPU
memory, a lost replica or an unavailable deployment (with Retry-After), 504 too slow, 500 a bug.
Handle callers call `generate` and get the typed errors.
"""

import base64
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from deployments.api import (
    ErrorDetail,
    ErrorResponse,
    GeneratedImage,
    ImageData,
    ImageRequest,
    ImagesResponse,
    InvalidRequestError,
    PartialImage,
    ServiceUnavailableError,
    Usage,
    VerificationFailedError,
    VortexError,
)
from deployments.autoscaling import held_resources
from deployments.config import AuthConfig, ImageLimits, ServingConfig
from deployments.observability import request_id
from deployments.serving import AcceptedRequest, Event, ImageService

logger = logging.getLogger("ray.serve")

app = FastAPI(
    title="Vortex Serve",
    description="FLUX.1-schnell text-to-image, every image checked by a dual-CLIP verifier before it is returned.",
    version="0.1.0",
)
GENERATIONS = "/v1/images/generations"
OPEN_PATHS = {"/", "/healthz", "/readyz", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}
# The playground: one page, no build step and nothing fetched from elsewhere (many clusters have no internet).
PLAYGROUND = (Path(__file__).with_name("playground.html")).read_text()


class AuthenticationError(VortexError):
    status_code = 401
    type = "authentication_error"

    def __str__(self) -> str:
        return "missing or invalid API key"


class RouteError(VortexError):
    """A path or method the API does not have (FastAPI's 404 and 405)."""

    type = "invalid_request_error"

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(status_code, message)
        self.status_code = status_code
        self.message = message

    def __str__(self) -> str:
        return self.message


class InternalError(VortexError):
    """A bug: the request failed in a way the service has no answer for."""

    def __str__(self) -> str:
        return f"the service failed while serving request {request_id()}; its logs have the details"


class BodyTooLargeError(VortexError):
    status_code = 413
    type = "invalid_request_error"
    param = "body"

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit

    def __str__(self) -> str:
        return f"request body must be at most {self.limit} bytes"


def error_body(error: VortexError) -> dict:
    body = ErrorResponse(
        error=ErrorDetail(message=str(error), type=error.type, param=error.param),
        attempts=error.attempts if isinstance(error, VerificationFailedError) else None,
    )
    return body.model_dump(mode="json", exclude=set() if body.attempts else {"attempts"})


def error_response(error: VortexError, retry_after_s: int) -> JSONResponse:
    """The one mapping from an error to an HTTP answer: its status, an OpenAI-style body, and the headers."""
    headers = {}
    if error.status_code == 503:
        headers["Retry-After"] = str(retry_after_s)
    if isinstance(error, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(status_code=error.status_code, content=error_body(error), headers=headers)


@app.exception_handler(VortexError)
async def _service_error(request: Request, error: VortexError) -> JSONResponse:
    return error_response(error, request.app.state.ingress.serving.retry_after_s)


@app.exception_handler(HTTPException)
async def _route_error(request: Request, exc: HTTPException) -> JSONResponse:
    message = f"{request.method} {request.url.path}: {exc.detail}"
    response = await _service_error(request, RouteError(exc.status_code, message))
    response.headers.update(exc.headers or {})  # e.g. Allow, with 405
    return response


@app.exception_handler(Exception)
async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("request %s failed", request_id())
    return await _service_error(request, InternalError())


@app.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    """OpenAI-style 400 naming the field, instead of FastAPI's 422 list."""
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        error = InvalidRequestError("body", f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}")
    else:
        param = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
        error = InvalidRequestError(param, first["msg"])
    return await _service_error(request, error)


@app.middleware("http")
async def _guard(request: Request, call_next):
    """API key and body size, before the body is parsed."""
    ingress: Ingress = request.app.state.ingress
    if request.url.path not in OPEN_PATHS and not ingress.authorized(request.headers.get("authorization")):
        return error_response(AuthenticationError(), ingress.serving.retry_after_s)
    if request.method == "POST":
        limit = ingress.limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        # A declared size is refused unread; an undeclared (chunked) body is measured once read.
        if (declared.isdigit() and int(declared) > limit) or len(await request.body()) > limit:
            return error_response(BodyTooLargeError(limit), ingress.serving.retry_after_s)
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


def server_sent_event(payload: dict) -> str:
    return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n"


# Module-level helpers above this line: serve.ingress snapshots the class when it is defined.
# Room for far more requests than `serving.max_concurrent_requests`, and no queue limit: Ray's proxy
# would answer those limits itself, in plain text; the application answers an overload in JSON.
# A replica stopped by a redeploy or a scale-down first finishes the requests it holds: they end within
# serving.request_timeout_s (default 120 s).
@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=1024, graceful_shutdown_timeout_s=130)
@serve.ingress(app)
class Ingress:
    def __init__(
        self, generator: DeploymentHandle, verifier: DeploymentHandle, limits: ImageLimits, serving: ServingConfig
    ) -> None:
        self.service = ImageService(generator, verifier, limits, serving)
        self.limits = limits
        self.serving = serving
        self.api_keys = load_api_keys(serving.auth)
        options = json.dumps({"sizes": limits.sizes, "max_images": limits.max_images})
        self.playground_page = PLAYGROUND.replace("__OPTIONS__", options.replace("</", "<\\/"))
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

    def record_autoscaling_stats(self) -> dict[str, float]:
        """What this replica holds, for `deployments.autoscaling`'s guard (Serve asks with an autoscaling_config)."""
        return held_resources()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground(self) -> str:
        """A page to try prompts in a browser: progress and previews from the stream, then each image's verification.
        It asks for an API key when the service answers 401."""
        return self.playground_page

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: the Ingress answers. Whether images can be made now is `/readyz`."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse, "description": "Not ready; see Retry-After."}})
    async def readyz(self) -> dict[str, str]:
        """Readiness: the generator (loaded and warmed up) and the verifier each have a running replica."""
        if unready := await self.service.unready():
            raise ServiceUnavailableError(f"not ready: no running replica of {', '.join(unready)}")
        return {"status": "ready"}

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
        """Generate `n` images for `prompt`, each verified against it, as base64 files (png, jpeg or webp).

        With `stream: true` the answer is server-sent events: `vortex.progress` (denoising step i of N,
        verification started) as the work goes, `image_generation.partial_image` previews when
        `partial_images` asks, then one `image_generation.completed` per image, or one `error` event
        carrying what the non-streaming answer's status and body would have been.
        """
        accepted = self.service.accept(request)  # bad input is a plain 400, also before a stream starts
        if request.stream:
            return StreamingResponse(self._server_sent_events(accepted), media_type="text/event-stream")
        images = [event async for event in self.service.generate(accepted) if isinstance(event, GeneratedImage)]
        return ImagesResponse(
            created=int(time.time()),
            request_id=request_id(),
            output_format=request.output_format,
            size=accepted.size,
            quality=accepted.quality,
            usage=Usage.of(images[0].text_tokens, accepted.width, accepted.height, len(images)),
            data=[ImageData.from_image(i) for i in images],
        )

    async def _server_sent_events(self, accepted: AcceptedRequest) -> AsyncIterator[str]:
        """OpenAI's `image_generation.partial_image` and `image_generation.completed` events (their fields, and
        `image_index`: which of the `n` images), with `vortex.progress` events between them."""
        try:
            async for event in self.service.generate(accepted):
                if isinstance(event, dict):
                    yield server_sent_event(event)
                    continue
                common = {
                    "background": "opaque",
                    "created_at": int(time.time()),
                    "output_format": event.output_format,
                    "quality": accepted.quality,
                    "size": accepted.size,
                }
                if isinstance(event, PartialImage):
                    payload = {
                        "type": "image_generation.partial_image",
                        "b64_json": base64.b64encode(event.image).decode(),
                        **common,
                        "partial_image_index": event.partial_image_index,
                        "image_index": event.slot,
                    }
                else:
                    usage = Usage.of(event.text_tokens, accepted.width, accepted.height, 1)
                    payload = {
                        "type": "image_generation.completed",
                        **common,
                        "usage": usage.model_dump(),
                        **ImageData.from_image(event).model_dump(mode="json"),
                    }
                yield server_sent_event(payload)
        except Exception as error:  # after the 200 has gone, a stream can only end with an error event
            if not isinstance(error, VortexError):
                logger.exception("request %s failed", request_id())
                error = InternalError()
            yield server_sent_event({"type": "error", "status": error.status_code, **error_body(error)})

    async def generate(self, request: ImageRequest | dict) -> list[GeneratedImage]:
        """Handle API: generate and verify images for `request`.

        Call it from your own Ray actors or tasks with
        `serve.get_app_handle("vortex").generate.remote(ImageRequest(prompt=...))`. Raises the errors of
        `deployments.api`: `InvalidRequestError` (a `ValueError` naming the field), `VerificationFailedError`
        when no attempt passed, `ServiceUnavailableError` when overloaded or a replica failed (its subclass
        `OutOfGpuMemoryError` when a GPU ran out of memory), and `RequestTimeoutError` (a `TimeoutError`)
        past `serving.request_timeout_s`.
        """
        return [event async for event in self.generate_stream(request) if isinstance(event, GeneratedImage)]

    async def generate_stream(self, request: ImageRequest | dict) -> AsyncIterator[Event]:
        """Handle API, streamed: progress dicts (`vortex.progress`) as they happen (and, for a request with
        `stream: true` and `partial_images`, each preview as a `PartialImage`), then each `GeneratedImage`.

        Call it with `handle.options(stream=True).generate_stream.remote(request)`; raises as `generate`.
        """
        async for event in self.service.generate(self.service.accept(request)):
            yield event
