"""Ingress: the FastAPI front door (no GPU). Validates, calls the generator then the verifier, encodes PNGs."""

import asyncio
import io
import secrets
import time

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.api import (
    MAX_SEED,
    ErrorDetail,
    ErrorResponse,
    GeneratedImage,
    ImageData,
    ImageLimits,
    ImageRequest,
    ImagesResponse,
    InvalidRequestError,
)

app = FastAPI(
    title="Vortex Serve",
    description="FLUX.1-schnell text-to-image, every image checked by a dual-CLIP verifier before it is returned.",
    version="0.1.0",
)


def _error(status: int, param: str | None, message: str) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, param=param))
    return JSONResponse(status_code=status, content=body.model_dump())


@app.exception_handler(RequestValidationError)
async def _invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
    """OpenAI-style 400 naming the field, instead of FastAPI's 422 list."""
    first = exc.errors()[0]
    location = [str(part) for part in first["loc"] if part != "body"]
    if first["type"] == "json_invalid":
        return _error(400, "body", f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}")
    param = ".".join(location) or "body"
    return _error(400, param, f"{param}: {first['msg']}")


@app.exception_handler(InvalidRequestError)
async def _invalid_request(_: Request, exc: InvalidRequestError) -> JSONResponse:
    return _error(400, exc.field, str(exc))


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
@serve.ingress(app)
class Ingress:
    def __init__(self, generator: DeploymentHandle, verifier: DeploymentHandle, limits: ImageLimits) -> None:
        self.generator = generator
        self.verifier = verifier
        self.limits = limits

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.post(
        "/v1/images/generations",
        response_model=ImagesResponse,
        responses={400: {"model": ErrorResponse, "description": "Invalid request; `error.param` names the field."}},
    )
    async def create_images(self, request: ImageRequest) -> ImagesResponse:
        """Generate `n` images for `prompt`, each verified against it, as base64 PNGs."""
        images = await self.generate(request)
        return ImagesResponse(created=int(time.time()), data=[ImageData.from_image(image) for image in images])

    async def generate(self, request: ImageRequest | dict) -> list[GeneratedImage]:
        """Handle API: generate and verify images for `request`.

        Call it from your own Ray actors or tasks with
        `serve.get_app_handle("vortex").generate.remote(ImageRequest(prompt=...))`. Raises
        `InvalidRequestError` (a `ValueError` naming the field) for a request the service refuses.
        """
        if isinstance(request, dict):
            try:
                request = ImageRequest.model_validate(request)
            except ValidationError as exc:
                raise InvalidRequestError.from_validation_error(exc) from None
        width, height, steps = self.limits.check(request)
        first_seed = secrets.randbelow(MAX_SEED + 1 - request.n) if request.seed is None else request.seed
        seeds = [(first_seed + i) % (MAX_SEED + 1) for i in range(request.n)]

        pixels_response = self.generator.generate.remote(
            request.prompt,
            seeds=seeds,
            width=width,
            height=height,
            steps=steps,
            negative_prompt=request.negative_prompt,
        )
        verifications = await self.verifier.verify.remote(pixels_response, request.prompt, request.include_embeddings)
        pixels = await pixels_response
        pngs = await asyncio.to_thread(
            lambda: [None if v.withheld else encode_png(image) for image, v in zip(pixels, verifications, strict=True)]
        )
        return [
            GeneratedImage(png=png, seed=seed, verification=verification)
            for png, seed, verification in zip(pngs, seeds, verifications, strict=True)
        ]
