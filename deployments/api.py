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
        width, height = (int(side) for side in request.size.split("x"))
        return width, height, steps


@dataclass
class GeneratedImage:
    """One verified image, as handle callers receive it. `png` is None when the content policy withheld it."""

    png: bytes | None
    seed: int
    verification: Verification


class ImageData(BaseModel):
    b64_json: str | None = Field(description="The PNG, base64-encoded; null when withheld.")
    withheld: bool = Field(description="The content policy flagged the image; `verification.reasons` says why.")
    seed: int = Field(description="The seed this image was drawn from.")
    verification: Verification

    @classmethod
    def from_image(cls, image: GeneratedImage) -> "ImageData":
        b64 = None if image.png is None else base64.b64encode(image.png).decode()
        return cls(b64_json=b64, withheld=image.png is None, seed=image.seed, verification=image.verification)


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix time the response was made.")
    data: list[ImageData]


class ErrorDetail(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = Field(description="The request field at fault.")
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
