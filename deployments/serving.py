"""Serving one image request, for HTTP and handle callers alike: generate, verify, generate again with a
new seed for every image that failed (up to `serving.max_attempts`), encode the image files (png, jpeg or webp).

No HTTP here: `ingress.py` routes to this and turns its typed errors (`deployments.api`) into answers.
"""

import asyncio
import io
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ReplicaState

from deployments.api import (
    MAX_SEED,
    Attempt,
    GeneratedImage,
    GenerationJob,
    ImageRequest,
    InvalidRequestError,
    PartialImage,
    RejectionKind,
    RequestTimeoutError,
    ServiceUnavailableError,
    Verification,
    VerificationFailedError,
    VortexError,
    preview_steps,
)
from deployments.config import ImageLimits, ServingConfig
from deployments.observability import request_id, service_metrics

logger = logging.getLogger("ray.serve")

Event = dict | PartialImage | GeneratedImage  # progress dicts (`vortex.progress`), previews, then each image


@dataclass
class AcceptedRequest:
    """A request that passed every check, with what the checks worked out."""

    request: ImageRequest
    width: int
    height: int
    steps: int
    quality: str  # low, medium or high: what the steps amount to

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def encode_images(pixels: np.ndarray, output_format: str, compression: int | None) -> list[bytes]:
    """uint8 [N, H, W, 3] pixels as png, jpeg or webp files; `compression` is the lossy formats' quality (100)."""
    if output_format == "png":
        options = {"compress_level": 1}  # 4x faster than the default 6
    else:
        options = {"quality": 100 if compression is None else compression}
    files = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=output_format.upper(), **options)
        files.append(buffer.getvalue())
    return files


def encode_previews(
    previews: np.ndarray, width: int, height: int, output_format: str, compression: int | None
) -> list[bytes]:
    """Previews at the latent's resolution, scaled up to the image's size and encoded as the image will be."""
    scaled = [np.asarray(Image.fromarray(preview).resize((width, height), Image.BILINEAR)) for preview in previews]
    return encode_images(np.stack(scaled), output_format, compression)


@contextmanager
def ray_failures_as_unavailable(deployment: str) -> Iterator[None]:
    """A call to another deployment: its overload and lost replicas become `ServiceUnavailableError`, and the
    service's own errors raised in its replica (out of GPU memory) reach the caller as themselves."""
    try:
        yield
    except BackPressureError:
        raise ServiceUnavailableError(f"the service is at capacity ({deployment}); retry later") from None
    except (RayActorError, ReplicaUnavailableError):
        logger.warning("a %s replica died while serving request %s", deployment, request_id())
        raise ServiceUnavailableError(f"a {deployment} replica failed while serving this request; retry") from None
    except DeploymentUnavailableError:
        logger.error("request %s: the %s deployment is unavailable (it failed to deploy)", request_id(), deployment)
        raise ServiceUnavailableError(f"the {deployment} deployment is unavailable; retry later") from None
    except RayTaskError as error:
        if isinstance(error.cause, VortexError):
            raise error.cause from None
        raise


class ImageService:
    def __init__(
        self, generator: DeploymentHandle, verifier: DeploymentHandle, limits: ImageLimits, serving: ServingConfig
    ) -> None:
        self.generator = generator
        self.verifier = verifier
        self.limits = limits
        self.serving = serving
        self.metrics = service_metrics()
        self.in_flight = 0  # requests being generated: the admission limit counts them

    def accept(self, request: ImageRequest | dict) -> AcceptedRequest:
        """Validate `request` (a dict from handle callers too); raise `InvalidRequestError` naming the field,
        or `ServiceUnavailableError` when `serving.max_concurrent_requests` are in flight already."""
        if self.in_flight >= self.serving.max_concurrent_requests:
            raise ServiceUnavailableError("the service is at capacity; retry later")
        if isinstance(request, dict):
            try:
                request = ImageRequest.model_validate(request)
            except ValidationError as exc:
                raise InvalidRequestError.from_validation_error(exc) from None
        width, height, steps = self.limits.check(request)
        return AcceptedRequest(request, width, height, steps, self.limits.quality(steps))

    async def unready(self) -> list[str]:
        """The deployments this service calls that have no running replica now: still loading and warming
        up, failed to deploy, or lost. Asked of Serve's controller, so a busy replica still counts."""
        applications = (await asyncio.to_thread(serve.status)).applications

        def running(handle: DeploymentHandle) -> int:
            app = applications.get(handle.app_name)
            deployment = app.deployments.get(handle.deployment_name) if app else None
            return deployment.replica_states.get(ReplicaState.RUNNING, 0) if deployment else 0

        return [handle.deployment_name for handle in (self.generator, self.verifier) if not running(handle)]

    async def generate(self, accepted: AcceptedRequest) -> AsyncIterator[Event]:
        """Progress events as the work goes (with `stream` and `partial_images`, previews of the first attempt's
        images as `PartialImage`s), then each verified image; the one place request latency is recorded.

        Raises `VerificationFailedError`, `ServiceUnavailableError` (and its `OutOfGpuMemoryError`) or
        `RequestTimeoutError`.
        """
        start = time.perf_counter()
        status = 200
        self.in_flight += 1
        try:
            async with asyncio.timeout(self.serving.request_timeout_s):
                async for event in self._attempts(accepted):
                    yield event
        except TimeoutError:
            status = RequestTimeoutError.status_code
            raise RequestTimeoutError(self.serving.request_timeout_s) from None
        except VortexError as error:
            status = error.status_code
            raise
        finally:
            self.in_flight -= 1
            self.metrics.request_latency.observe(time.perf_counter() - start, tags={"status": str(status)})

    async def _attempts(self, accepted: AcceptedRequest) -> AsyncIterator[Event]:
        request, n = accepted.request, accepted.request.n
        first_seed = secrets.randbelow(MAX_SEED + 1 - n) if request.seed is None else request.seed
        attempts: list[list[Attempt]] = [[] for _ in range(n)]
        passed: dict[int, tuple[int, bytes, Verification]] = {}  # slot -> seed, image file, verdict
        pending = list(range(n))
        text_tokens = 0  # the generator tells
        previews_at = preview_steps(request.partial_images, accepted.steps) if request.stream else ()
        for attempt in range(1, self.serving.max_attempts + 1):
            # Slot i, attempt a uses seed first_seed + i + (a - 1) * n: reproducible, never repeated in a request.
            seeds = [(first_seed + slot + (attempt - 1) * n) % (MAX_SEED + 1) for slot in pending]
            progress = {"type": "vortex.progress", "attempt": attempt, "images": pending}
            job = GenerationJob(
                request.prompt,
                seeds,
                accepted.width,
                accepted.height,
                accepted.steps,
                request.negative_prompt,
                previews_at if attempt == 1 else (),  # a retry streams its progress, not previews again
            )
            pixels = None
            with ray_failures_as_unavailable("FluxGenerator"):
                async for event in self.generator.options(stream=True).generate_stream.remote(job):
                    if isinstance(event, np.ndarray):
                        pixels = event
                    elif "text_tokens" in event:
                        text_tokens = event["text_tokens"]
                    elif "previews" in event:
                        files = await asyncio.to_thread(
                            encode_previews,
                            event["previews"],
                            accepted.width,
                            accepted.height,
                            request.output_format,
                            request.output_compression,
                        )
                        index = previews_at.index(event["preview_step"])
                        for slot, file in zip(pending, files, strict=True):
                            yield PartialImage(file, request.output_format, slot, index)
                    else:  # {"stage": "queued"} behind another batch group, or {"step": i, "steps": n}
                        yield {**progress, "stage": "denoising", **event}
            yield {**progress, "stage": "verifying"}
            # Images are encoded while the verifier works (off the event loop): most pass, so the two overlap.
            encoding = asyncio.ensure_future(
                asyncio.to_thread(encode_images, pixels, request.output_format, request.output_compression)
            )
            with ray_failures_as_unavailable("ClipVerifier"):
                verifications = await self.verifier.verify.remote(pixels, request.prompt, request.include_embeddings)
            files = await encoding
            still_failing = []
            for slot, seed, file, verification in zip(pending, seeds, files, verifications, strict=True):
                attempts[slot].append(Attempt.of(seed, verification))
                if verification.passed:
                    passed[slot] = (seed, file, verification)
                    continue
                still_failing.append(slot)
                for rejection in verification.rejections:
                    self.metrics.rejections.inc(tags={"reason": rejection.kind.value})
                    if rejection.kind == RejectionKind.CONTENT_POLICY:
                        self.metrics.withheld.inc(tags={"concept": rejection.concept})
            pending = still_failing
            if not pending:
                break
        self.metrics.attempts.observe(max(len(slot) for slot in attempts))
        if pending:
            raise VerificationFailedError(attempts)
        for slot in range(n):
            seed, file, verification = passed[slot]
            yield GeneratedImage(
                image=file,
                output_format=request.output_format,
                seed=seed,
                verification=verification,
                attempts=attempts[slot],
                text_tokens=text_tokens,
            )
