"""The public API: OpenAI-shaped request and response models, limits, and the typed request error.

Shared by HTTP callers (FastAPI validates the JSON body against `ImageRequest`) and handle callers
(who build `ImageRequest` themselves and get `GeneratedImage` objects back).
"""

import base64
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from deployments.engines.clip import Verification

MAX_SEED = 2**32 - 1


class VerificationFailedError(RuntimeError):
    """No attempt produced an image that passed verification; `attempts` holds every verdict."""

    def __init__(self, attempts: list[list["Attempt"]]) -> None:
        super().__init__(attempts)
        self.attempts = attempts

    def __str__(self) -> str:
        tries = max(len(slot) for slot in self.attempts)
        withheld = any(reason.startswith("content policy") for slot in self.attempts for reason in slot[-1].reasons)
        why = " (the content policy withheld images)" if withheld else ""
        return f"no image passed verification after {tries} attempt(s){why}; `attempts` has every verdict"


class InvalidRequestError(ValueError):
    """A request the service refuses; `field` names the offending request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"

    @classmethod
    def from_validation_error(cls, error: ValidationError) -> "InvalidRequestError":
        first = error.errors()[0]
        return cls(".".join(str(part) for part in first["loc"]) or "body", first["msg"])


class ImageRequest(BaseModel):
    """`POST /v1/images/generations`: the OpenAI Images API request plus Flux's own knobs."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(description="What to draw. Leading and trailing whitespace is ignored.")
    n: int = Field(1, ge=1, description="Number of images; the upper bound is the service's `max_images`.")
    size: str = Field("512x512", description="WIDTHxHEIGHT, one of the service's `sizes`.")
    response_format: Literal["b64_json"] = Field("b64_json", description="Images come back as base64 PNG.")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Seed of the first image; image i uses seed + i. Random if absent."
    )
    negative_prompt: str | None = Field(
        None, description="What to avoid. Runs true classifier-free guidance: about twice the generation time."
    )
    num_inference_steps: int | None = Field(None, ge=1, description="Denoising steps; FLUX.1-schnell needs 1-4.")
    include_embeddings: bool = Field(False, description="Return each image's CLIP embeddings in its verification.")
    stream: bool = Field(False, description="Answer with server-sent events: progress, then each image.")
    model: str | None = Field(None, description="Accepted for OpenAI client compatibility; one model is served.")
    user: str | None = Field(None, description="Accepted for OpenAI client compatibility; not used.")

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, prompt: str) -> str:
        if not prompt.strip():
            raise PydanticCustomError("blank_prompt", "must not be empty or whitespace")
        return prompt.strip()


class ImageLimits(BaseModel):
    """What the service accepts; the `limits:` block of the application args."""

    model_config = ConfigDict(extra="forbid")

    sizes: list[str] = Field(["256x256", "512x512", "768x768", "1024x1024"], min_length=1)
    max_images: int = Field(4, ge=1)
    default_steps: int = Field(4, ge=1)
    max_steps: int = Field(8, ge=1)
    max_prompt_chars: int = Field(2000, ge=1)
    max_prompt_bytes: int = Field(4000, ge=1, description="UTF-8 bytes; a prompt of emoji counts 4 per glyph.")
    max_body_bytes: int = Field(16_384, ge=1, description="HTTP request body size; larger bodies get 413.")

    def check(self, request: ImageRequest) -> tuple[int, int, int]:
        """Raise `InvalidRequestError` for what the schema cannot know; return (width, height, steps)."""
        if request.size not in self.sizes:
            raise InvalidRequestError("size", f"must be one of {', '.join(self.sizes)}; got {request.size!r}")
        if request.n > self.max_images:
            raise InvalidRequestError("n", f"must be at most {self.max_images}; got {request.n}")
        steps = request.num_inference_steps or self.default_steps
        if steps > self.max_steps:
            raise InvalidRequestError("num_inference_steps", f"must be at most {self.max_steps}; got {steps}")
        if len(request.prompt) > self.max_prompt_chars:
            raise InvalidRequestError("prompt", f"must be at most {self.max_prompt_chars} characters")
        if len(request.prompt.encode()) > self.max_prompt_bytes:
            raise InvalidRequestError("prompt", f"must be at most {self.max_prompt_bytes} bytes in UTF-8")
        if request.negative_prompt and len(request.negative_prompt.encode()) > self.max_prompt_bytes:
            raise InvalidRequestError("negative_prompt", f"must be at most {self.max_prompt_bytes} bytes in UTF-8")
        width, height = (int(side) for side in request.size.split("x"))
        return width, height, steps


class AuthConfig(BaseModel):
    """API keys (bearer tokens). On unless `disabled: true` is written out."""

    model_config = ConfigDict(extra="forbid")

    disabled: bool = False
    keys_env: str | None = Field("VORTEX_API_KEYS", description="Environment variable with comma-separated keys.")
    keys_file: str | None = Field(None, description="File with one key per line.")


class ServingConfig(BaseModel):
    """How the ingress serves: the `serving:` block of the application args."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(3, ge=1, description="Generations per image slot until one passes verification.")
    request_timeout_s: float = Field(120.0, gt=0, description="A request taking longer fails with 504.")
    retry_after_s: int = Field(5, ge=1, description="Sent as Retry-After with 503 answers.")
    auth: AuthConfig = Field(default_factory=AuthConfig)


@dataclass
class Attempt:
    """One generation of one image slot and how it fared."""

    seed: int
    passed: bool
    ensemble_score: float
    scores: dict[str, float]
    reasons: list[str]

    @classmethod
    def of(cls, seed: int, verification: Verification) -> "Attempt":
        return cls(seed, verification.passed, verification.ensemble_score, verification.scores, verification.reasons)


@dataclass
class GeneratedImage:
    """One verified image, as handle callers receive it, with every attempt it took."""

    png: bytes
    seed: int
    verification: Verification
    attempts: list[Attempt]


class ImageData(BaseModel):
    b64_json: str = Field(description="The PNG, base64-encoded.")
    seed: int = Field(description="The seed this image was drawn from.")
    verification: Verification
    attempts: list[Attempt] = Field(description="Every generation for this image, the returned one last.")

    @classmethod
    def from_image(cls, image: GeneratedImage) -> "ImageData":
        return cls(
            b64_json=base64.b64encode(image.png).decode(),
            seed=image.seed,
            verification=image.verification,
            attempts=image.attempts,
        )


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix time the response was made.")
    request_id: str = Field(description="Also in the X-Request-ID header and the service's logs.")
    data: list[ImageData]


class ErrorDetail(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = Field(description="The request field at fault.")
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
    attempts: list[list[Attempt]] | None = Field(None, description="With 422: every attempt for each image slot.")
