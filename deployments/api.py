"""What callers and the service exchange: requests, responses, verdicts, the generation job, and errors.

Pydantic and the standard library only (`deployments.vram` is standard library). A Ray actor that
calls the service by handle imports this module, and so does the CPU-only Ingress: neither loads
torch, diffusers, transformers or open_clip. HTTP callers see the same models as JSON (FastAPI
validates request bodies against `ImageRequest`).
"""

import base64
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, computed_field, field_validator
from pydantic_core import PydanticCustomError

from deployments.vram import GIB

MAX_SEED = 2**32 - 1  # seeds are 32-bit, for requests and the engine alike


Quality = Literal["auto", "low", "medium", "high", "xhigh", "max", "standard", "hd"]
NOT_OFFERED = {  # field: (the value refused, why)
    "background": ("transparent", "Flux draws opaque images"),
    "response_format": ("url", "images come back as b64_json (nothing is stored)"),
}


class ImageRequest(BaseModel):
    """`POST /v1/images/generations`: the OpenAI Images API request, whole, plus Flux's own knobs.

    Every field the official `openai` client sends is accepted. What maps onto Flux is honoured; what does
    not is accepted and ignored (`style`, `complexity`, `user`, `safety_identifier`, `model`); what cannot
    be honoured is refused naming the field (`background: transparent`, `response_format: url`, gif/svg).
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(description="What to draw. Leading and trailing whitespace is ignored.")
    n: int = Field(1, ge=1, description="Number of images; the upper bound is the service's `max_images`.")
    size: str = Field("auto", description="WIDTHxHEIGHT, one of the service's `sizes`; `auto` is the first of them.")
    quality: Quality = Field(
        "auto",
        description="Denoising steps: low 1, medium 2, high (xhigh, max, hd) 4, auto (standard) the service's "
        "default (`limits.quality_steps`, `limits.default_steps`). `num_inference_steps` overrides it.",
    )
    background: Literal["auto", "opaque", "transparent"] = Field(
        "auto", description="Flux draws opaque images: `transparent` is refused."
    )
    moderation: Literal["auto", "low"] = Field(
        "auto", description="Accepted; the operator's content policy applies whatever a request asks."
    )
    style: Literal["vivid", "natural"] | None = Field(None, description="Accepted and ignored (a DALL-E 3 knob).")
    complexity: Literal["low", "medium", "high"] | None = Field(None, description="Accepted and ignored.")
    response_format: Literal["b64_json", "url"] = Field(
        "b64_json", description="Images come back base64-encoded: `url` is refused (the service stores nothing)."
    )
    output_format: Literal["png", "jpeg", "webp"] = Field("png", description="The images' file format.")
    output_compression: int | None = Field(
        None,
        ge=0,
        le=100,
        description="jpeg and webp only: quality in percent, 100 (the default) the least lossy, as OpenAI's field.",
    )
    stream: bool = Field(False, description="Answer with server-sent events: progress, previews, then each image.")
    partial_images: int = Field(
        0,
        ge=0,
        le=3,
        description="With `stream`: previews during denoising (`image_generation.partial_image` events), each a "
        "cheap linear projection of the model's current estimate, not a VAE decode. Ignored without `stream`.",
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Seed of the first image; image i uses seed + i. Random if absent."
    )
    negative_prompt: str | None = Field(
        None, description="What to avoid. Runs true classifier-free guidance: about twice the generation time."
    )
    num_inference_steps: int | None = Field(None, ge=1, description="Denoising steps; FLUX.1-schnell needs 1-4.")
    include_embeddings: bool = Field(False, description="Return each image's CLIP embeddings in its verification.")
    model: str | None = Field(None, description="Accepted and ignored: one model is served.")
    user: str | None = Field(None, description="Accepted and ignored.")
    safety_identifier: str | None = Field(None, description="Accepted and ignored.")

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, prompt: str) -> str:
        if not prompt.strip():
            raise PydanticCustomError("blank_prompt", "must not be empty or whitespace")
        return prompt.strip()

    @field_validator("background", "response_format")
    @classmethod
    def _offered(cls, value: str, info: ValidationInfo) -> str:
        """OpenAI values the schema names (so the client's requests validate) that this service cannot honour."""
        refused, why = NOT_OFFERED[info.field_name]
        if value == refused:
            raise PydanticCustomError("not_offered", "{value} is not offered: {why}", {"value": value, "why": why})
        return value

    @field_validator("output_compression")
    @classmethod
    def _compression_needs_a_lossy_format(cls, compression: int | None, info: ValidationInfo) -> int | None:
        if compression is not None and info.data.get("output_format", "png") == "png":
            raise PydanticCustomError("png_compression", "applies to jpeg and webp only; png is lossless")
        return compression


class RejectionKind(StrEnum):
    """Why the verifier rejected an image. Metrics and the 422 answer decide by this, never by the wording."""

    PROMPT_MISMATCH = "prompt_mismatch"  # the ensemble score is below `min_ensemble_score`
    DISTRACTOR = "distractor"  # a distractor caption matches the image better than the prompt
    CONTENT_POLICY = "content_policy"  # a banned concept is flagged: the image is withheld


class Rejection(BaseModel):
    kind: RejectionKind
    reason: str = Field(description="For people: what failed, with the numbers.")
    concept: str | None = Field(None, description="With content_policy: the flagged concept.")


class Verdict(BaseModel):
    """How one generated image fared with the verifier."""

    scores: dict[str, float] = Field(description="Raw image-prompt cosine per CLIP model.")
    ensemble_score: float = Field(description="Weighted mean of the calibrated scores.")
    rejections: list[Rejection] = Field(default_factory=list, description="Empty when the image passed.")

    @computed_field
    @property
    def passed(self) -> bool:
        return not self.rejections

    @computed_field
    @property
    def reasons(self) -> list[str]:
        return [rejection.reason for rejection in self.rejections]


class Verification(Verdict):
    """The full verdict on a returned image."""

    calibrated_scores: dict[str, float] = Field(description="Per model: 0 at its threshold, 1 a pair gap above.")
    distractor_margin: float | None = Field(description="Prompt minus best distractor; null without distractors.")
    embeddings: dict[str, list[float]] | None = Field(None, description="Unit-norm image embedding per model.")

    @computed_field
    @property
    def flagged_concepts(self) -> list[str]:
        return [r.concept for r in self.rejections if r.kind == RejectionKind.CONTENT_POLICY and r.concept]


class Attempt(Verdict):
    """One generation of one image slot and how it fared."""

    seed: int

    @classmethod
    def of(cls, seed: int, verification: Verification) -> "Attempt":
        return cls(
            seed=seed,
            scores=verification.scores,
            ensemble_score=verification.ensemble_score,
            rejections=verification.rejections,
        )


@dataclass
class GenerationJob:
    """One request's share of a generator batch: its images, one per seed."""

    prompt: str
    seeds: list[int]
    width: int
    height: int
    steps: int
    negative_prompt: str | None = None
    preview_steps: tuple[int, ...] = ()  # after which denoising steps the caller wants previews

    @property
    def key(self) -> tuple:
        """What jobs sharing one forward pass must have in common."""
        return (self.width, self.height, self.steps, self.negative_prompt)


def preview_steps(partial_images: int, steps: int) -> tuple[int, ...]:
    """The steps after which `partial_images` previews are taken: spread over the steps before the last (whose
    image is the finished one), so with fewer steps than that there are fewer previews."""
    return tuple(sorted({round(steps * (i + 1) / (partial_images + 1)) for i in range(partial_images)} - {0, steps}))


class TokenCounts(BaseModel):
    text_tokens: int
    image_tokens: int


class Usage(BaseModel):
    """OpenAI's token accounting in Flux's units: the prompt's T5 tokens in, the image's latent patches out
    (one per 16x16 pixels: 4096 for a 1024x1024 image)."""

    input_tokens: int
    input_tokens_details: TokenCounts
    output_tokens: int
    output_tokens_details: TokenCounts
    total_tokens: int

    @classmethod
    def of(cls, text_tokens: int, width: int, height: int, images: int) -> "Usage":
        image_tokens = images * (width // 16) * (height // 16)
        return cls(
            input_tokens=text_tokens,
            input_tokens_details=TokenCounts(text_tokens=text_tokens, image_tokens=0),
            output_tokens=image_tokens,
            output_tokens_details=TokenCounts(text_tokens=0, image_tokens=image_tokens),
            total_tokens=text_tokens + image_tokens,
        )


@dataclass
class GeneratedImage:
    """One verified image, as handle callers receive it, with every attempt it took."""

    image: bytes  # the file, in `output_format`
    output_format: str
    seed: int
    verification: Verification
    attempts: list[Attempt]
    text_tokens: int  # of the prompt, as Flux's T5 encoder read it (for `Usage`)


@dataclass
class PartialImage:
    """A preview of image `slot` of a request while it is denoised (with `stream` and `partial_images`)."""

    image: bytes  # a file in the request's `output_format`, at the request's size
    output_format: str
    slot: int
    partial_image_index: int


class ImageData(BaseModel):
    b64_json: str = Field(description="The image file (the request's `output_format`), base64-encoded.")
    seed: int = Field(description="The seed this image was drawn from.")
    verification: Verification
    attempts: list[Attempt] = Field(description="Every generation for this image, the returned one last.")

    @classmethod
    def from_image(cls, image: GeneratedImage) -> "ImageData":
        return cls(
            b64_json=base64.b64encode(image.image).decode(),
            seed=image.seed,
            verification=image.verification,
            attempts=image.attempts,
        )


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix time the response was made.")
    request_id: str = Field(description="Also in the X-Request-ID header and the service's logs.")
    output_format: str = Field(description="The images' file format: png, jpeg or webp.")
    size: str = Field(description="WIDTHxHEIGHT of every image (what `auto` became).")
    quality: Literal["low", "medium", "high"] = Field(description="What the denoising steps amounted to.")
    background: Literal["opaque"] = Field("opaque", description="Flux draws opaque images.")
    usage: Usage
    data: list[ImageData]


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="OpenAI-style error type, e.g. invalid_request_error.")
    param: str | None = Field(None, description="The request field at fault.")
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
    attempts: list[list[Attempt]] | None = Field(None, description="With 422: every attempt for each image slot.")


# --- Errors. Handle callers catch these types; HTTP callers get `status_code` and an `ErrorResponse`. ---


class VortexError(Exception):
    """An error the service answers with: `status_code` and `type` are its HTTP status and OpenAI error type."""

    status_code: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    param: str | None = None


class InvalidRequestError(VortexError, ValueError):
    """A request the service refuses; `field` names the offending request field."""

    status_code = 400
    type = "invalid_request_error"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = self.param = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"

    @classmethod
    def from_validation_error(cls, error: ValidationError) -> "InvalidRequestError":
        first = error.errors()[0]
        return cls(".".join(str(part) for part in first["loc"]) or "body", first["msg"])


class VerificationFailedError(VortexError):
    """No attempt produced an image that passed verification; `attempts` holds every verdict per image slot."""

    status_code = 422
    type = "verification_failed"

    def __init__(self, attempts: list[list[Attempt]]) -> None:
        super().__init__(attempts)
        self.attempts = attempts

    def __str__(self) -> str:
        tries = max(len(slot) for slot in self.attempts)
        withheld = any(
            rejection.kind == RejectionKind.CONTENT_POLICY
            for slot in self.attempts
            for rejection in slot[-1].rejections
        )
        why = " (the content policy withheld images)" if withheld else ""
        return f"no image passed verification after {tries} attempt(s){why}; `attempts` has every verdict"


class ServiceUnavailableError(VortexError):
    """Overload or a lost replica: the request was not served; try again later (HTTP adds Retry-After)."""

    status_code = 503
    type = "service_unavailable"


class OutOfGpuMemoryError(ServiceUnavailableError):
    """CUDA ran out of memory for this request; the replica freed what it could and serves the next one."""

    def __init__(self, stage: str, allocated_bytes: int, total_bytes: int) -> None:
        super().__init__(stage, allocated_bytes, total_bytes)
        self.stage = stage
        self.allocated_bytes = allocated_bytes
        self.total_bytes = total_bytes

    def __str__(self) -> str:
        return (
            f"out of GPU memory during {self.stage} ({self.allocated_bytes / GIB:.2f} GiB allocated of "
            f"{self.total_bytes / GIB:.2f} GiB): ask for fewer or smaller images, or retry later"
        )


class RequestTimeoutError(VortexError, TimeoutError):
    """The request took longer than the service's `serving.request_timeout_s`."""

    status_code = 504
    type = "timeout"

    def __init__(self, timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.timeout_s = timeout_s

    def __str__(self) -> str:
        return f"the request took longer than {self.timeout_s} s"
