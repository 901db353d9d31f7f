"""Every setting of the application: the `args:` block of a Serve config, validated against `AppArgs`.

Pydantic and PyYAML only (the deployment classes are imported for the reference alone), so configs
validate where no model stack is installed. Each field is documented here once;
`docs/configuration.md` is generated from these models:

    python -m deployments.config docs/configuration.md

Ray Serve's own per-deployment options (replicas, resources, autoscaling) sit beside `args:` in the
YAML, under `deployments:`; their defaults are on the deployment classes.
"""

import json
import sys
import types
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticUndefined

from deployments.api import ImageRequest, InvalidRequestError


class FluxConfig(BaseModel):
    """How the generator loads and runs FLUX.1-schnell."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("black-forest-labs/FLUX.1-schnell", description="Hub id or local diffusers folder.")
    random_weights: Literal["tiny", "full"] | None = Field(
        None,
        description="Build the architecture in code with seeded random weights instead of loading `model`: "
        "'tiny' for the CPU profile, 'full' (FLUX.1-schnell's size) for GPU benchmarks.",
    )
    cache_dir: str | None = Field(None, description="Hugging Face cache folder for hub downloads.")
    offline: bool = Field(
        False, description="Never touch the network; load only files already on disk, or fail at start naming them."
    )
    precision: Literal["bf16", "fp16", "fp32", "nf4", "fp8"] = Field(
        "bf16",
        description="nf4: bitsandbytes 4-bit NF4 transformer with bf16 compute (CUDA only), its feed-forward layers "
        "run in halves (a third less activation memory at 1024x1024). fp8: the transformer "
        "blocks' matmuls in float8 with per-row scales (CUDA compute capability 8.9+: Ada, Hopper and newer).",
    )
    t5_nf4: bool = Field(False, description="With nf4, also quantize T5 (transformers keeps its `wo` layers bf16).")
    nf4_double_quant: bool = Field(False, description="With nf4, also quantize the quantization constants.")
    cpu_offload: bool = Field(
        False, description="diffusers model CPU offload: each component is on the GPU only while it runs."
    )
    text_encoder_offload: bool = Field(
        False,
        description="Keep both text encoders (T5 in bf16, and CLIP) in pinned CPU memory and stream their layers "
        "to the GPU while they encode (diffusers group offload on a side stream); T5 looks its tokens up in host "
        "memory. The transformer and the VAE decoder stay on the GPU. With nf4 for 12 GB cards.",
    )
    prompt_cache_size: int = Field(
        64,
        ge=0,
        description="Prompt embeddings kept on the device (about 2 MiB each): repeated prompts and "
        "retries skip the text encoders. 0 turns the cache off.",
    )
    device: str = Field("auto", description="'auto' picks CUDA when present, else CPU.")
    max_sequence_length: int = Field(256, ge=1, le=256, description="T5 tokens; FLUX.1-schnell allows 256.")
    true_cfg_scale: float = Field(
        4.0, gt=1.0, description="Used only with a negative prompt: true CFG, two transformer passes per step."
    )
    compile: Literal["none", "regional", "precompiled"] = Field(
        "none",
        description="regional: torch.compile of the transformer's repeated blocks and of the VAE decoder "
        "(compiled at replica start, before it serves; fused kernels, far fewer launches). precompiled: the "
        "same regions, each saved whole once compiled, under compile_cache_dir's vortex-regions folder (torch's "
        "experimental precompile API, torch 2.9+), so that a replica which finds them loads them instead of "
        "tracing them again, reading ahead those its config's last start asked for (fp8 profile, H200: a replica "
        "replacing a killed one, its weights on local disk, was ready 16.8-20.9 s after Serve scheduled it, "
        "depending on the host, in an image without packages the service does not use (README); the autoscaler's "
        "scale-up to the new replica's first answer took 23.7-25.3 s, regional's 90 s; but the first replica on an "
        "empty folder takes 256 s, regional's 148 s). Not with nf4; with vae_tile_size the decoder is compiled as "
        "with regional, not saved.",
    )
    fuse_qkv: bool = Field(False, description="Fuse the attention Q/K/V projections into one GEMM each.")
    cuda_graphs: int = Field(
        0,
        ge=0,
        description="Replay the text encoders, each denoising step and the VAE decode as CUDA graphs, captured "
        "at replica start for up to this many input shapes each: at least len(limits.sizes) x "
        "batching.generator.max_batch_size, so that every shape a request can have is captured before it "
        "serves. 0 turns them off.",
    )
    compile_cache_dir: str | None = Field(
        None,
        description="Where torch.compile keeps compiled kernels (TORCHINDUCTOR_CACHE_DIR), `compile: "
        "precompiled` its regions (in vortex-regions/), and the CUDA driver the kernels it compiles from PTX at their "
        "first launch (in cuda-jit/, unless CUDA_CACHE_PATH is set), so that a restarted or added replica compiles "
        "nothing. On a cluster, a volume every node mounts starts new replicas warm anywhere. Keep the folder whole: "
        "the regions alone still autotune (23-27 s on an H200): inductor keeps its choices in the rest; without "
        "cuda-jit/ a host's first replica took 2.3-2.6 s to capture CLIP's text encoder, not 0.3-0.5. null: "
        "torch's default under /tmp and the driver's under ~/.nv, per host.",
    )
    vae_tile_size: int = Field(
        0,
        ge=0,
        multiple_of=64,
        description="Decode images larger than this many pixels a side in overlapping tiles of this size (diffusers "
        "VAE tiling): the decoder's activations then scale with the tile, not the image (at 1024x1024, compiled, "
        "on an H200: +1.26 GiB untiled, +0.14 GiB in 256-pixel tiles) and decoding takes longer (30 ms instead of "
        "7 ms at 512x512, 129 ms instead of 34 ms at 1024x1024). With compile, the tiles' several shapes share one "
        "dynamic-shape compile. 0: whole images.",
    )
    cublas_workspace_mib: int | None = Field(
        None,
        ge=1,
        description="cuBLAS scratch memory per CUDA stream, in MiB: sets CUBLAS_WORKSPACE_CONFIG (unless it is set "
        "already) before the replica's first matmul. torch's default is 32 MiB on Hopper and Blackwell, about 8 MiB "
        "on Ampere and Ada, held for the life of the process by every stream that ran a matmul (two with CUDA "
        "graphs). null: torch's default.",
    )
    min_side: int = Field(256, ge=16, multiple_of=16, description="Smallest width or height accepted.")
    max_side: int = Field(1536, ge=16, multiple_of=16, description="Largest width or height accepted.")

    @model_validator(mode="after")
    def _options_fit_together(self) -> "FluxConfig":
        if self.random_weights and (
            self.precision == "nf4" or self.t5_nf4 or self.cpu_offload or self.text_encoder_offload
        ):
            raise ValueError(
                "random_weights builds the model in memory; nf4, t5_nf4, cpu_offload and text_encoder_offload need the "
                "loading path. Save it first (python -m deployments.engines.random_models PATH) and set `model: PATH`."
            )
        if self.text_encoder_offload and (self.cpu_offload or self.t5_nf4):
            raise ValueError("text_encoder_offload streams a bf16 T5; it does not combine with cpu_offload or t5_nf4")
        if self.compile == "precompiled" and self.precision == "nf4":
            raise ValueError("compile: precompiled regions need plain weights, not NF4's packed ones; use regional")
        if self.fuse_qkv and self.precision == "nf4":
            raise ValueError("fuse_qkv: NF4 weights are packed per layer and cannot be concatenated")
        if self.cuda_graphs and self.cpu_offload:
            raise ValueError("cuda_graphs: a graph replays fixed weight addresses; cpu_offload moves the weights")
        return self


class Calibration(BaseModel):
    """One CLIP model's score statistics on an operator's own images; `python -m deployments.calibrate` writes it."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(description="Raw cosine that best separates matched from mismatched pairs.")
    matched_mean: float = Field(description="Mean cosine of images with their own prompt.")
    mismatched_mean: float = Field(description="Mean cosine of images with other images' prompts.")
    matched_std: float = Field(0.0, ge=0, description="Standard deviation of the matched cosines.")
    mismatched_std: float = Field(0.0, ge=0, description="Standard deviation of the mismatched cosines.")
    pairs: int | None = Field(None, description="Image/prompt pairs the statistics came from; null: not measured.")

    @model_validator(mode="after")
    def _matched_above_mismatched(self) -> "Calibration":
        if self.matched_mean <= self.mismatched_mean:
            raise ValueError("matched_mean must be above mismatched_mean: this model cannot tell them apart")
        return self

    def calibrated(self, cosine: float) -> float:
        """0 at the threshold, 1 one matched-vs-mismatched gap above it."""
        return (cosine - self.threshold) / (self.matched_mean - self.mismatched_mean)


# Random weights cannot judge an image: this calibration passes every cosine (all are at least -1).
ACCEPT_ALL = Calibration(threshold=-1.0, matched_mean=0.1, mismatched_mean=0.0)


class ClipModelConfig(BaseModel):
    """One CLIP model of the verifier's ensemble."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="open_clip model name; OpenAI weights need the -quickgelu names.")
    pretrained: str | None = Field(
        description="Weight tag (e.g. 'openai') or local checkpoint path; null builds random weights."
    )
    calibration: Calibration | None = Field(
        None, description="Needed to serve; `python -m deployments.calibrate` measures it on your images."
    )
    weight: float = Field(1.0, gt=0, description="Weight in the ensemble.")


# PLACEHOLDER calibrations: typical published CLIP score ranges (matching pairs about 0.25-0.35, unrelated
# about 0.1-0.2), not measured on FLUX outputs. `python -m deployments.calibrate` measures your own.
OPENAI_CLIP_MODELS = [
    ClipModelConfig(
        name="ViT-B-32-quickgelu",
        pretrained="openai",
        calibration=Calibration(
            threshold=0.22, matched_mean=0.31, matched_std=0.035, mismatched_mean=0.15, mismatched_std=0.03
        ),
    ),
    ClipModelConfig(
        name="ViT-L-14-quickgelu",
        pretrained="openai",
        calibration=Calibration(
            threshold=0.19, matched_mean=0.27, matched_std=0.035, mismatched_mean=0.12, mismatched_std=0.03
        ),
    ),
]


class ConceptConfig(BaseModel):
    """A banned concept of the content policy, described by one or more captions."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Reported in verdicts and the `vortex_withheld_total` metric.")
    captions: list[str] = Field(min_length=1, description="Texts describing the concept.")
    threshold: float = Field(description="Flag at or above this margin over the best neutral caption.")


class PolicyConfig(BaseModel):
    """The content policy: images flagged for a concept are withheld from callers."""

    model_config = ConfigDict(extra="forbid")

    neutral_captions: list[str] = Field(
        ["a photo", "an illustration", "a painting", "a landscape", "an object", "a person"],
        min_length=1,
        description="What an ordinary image matches; a concept is scored by its margin over the best of these.",
    )
    concepts: list[ConceptConfig] = Field(
        # PLACEHOLDER thresholds: check them on labelled images of your own.
        default_factory=lambda: [
            ConceptConfig(
                name="sexual content", captions=["explicit sexual content", "a naked person"], threshold=0.04
            ),
            ConceptConfig(
                name="graphic violence", captions=["graphic violence with blood", "a gory wound"], threshold=0.04
            ),
        ],
        description="Banned concepts; empty turns the policy off.",
    )


class VerifierConfig(BaseModel):
    """How the verifier loads its CLIP models and decides; the rule is in `deployments/engines/clip.py`."""

    model_config = ConfigDict(extra="forbid")

    models: list[ClipModelConfig] = Field(
        default_factory=lambda: [model.model_copy(deep=True) for model in OPENAI_CLIP_MODELS],
        min_length=1,
        description="The CLIP ensemble. Default: OpenAI ViT-B-32 and ViT-L-14 with PLACEHOLDER calibrations "
        "from published score ranges; calibrate on your own images.",
    )
    min_ensemble_score: float = Field(0.0, description="Ensemble of calibrated scores an image must reach.")
    distractors: list[str] = Field(
        ["random noise", "a blank image", "text on a plain background", "a blurry photo"],
        description="Captions the prompt must outscore; empty disables the relative check.",
    )
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="The content policy.")
    cache_dir: str | None = Field(None, description="Hugging Face cache folder for CLIP weights.")
    offline: bool = Field(False, description="Never download CLIP weights; fail at start if they are not cached.")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto: fp16 on a GPU (half the memory; LayerNorm stays fp32), fp32 on the CPU."
    )
    device: str = Field("auto", description="'auto' picks CUDA when present, else CPU.")
    cuda_graphs: int = Field(
        0,
        ge=0,
        description="Replay each model's image and prompt encoders as CUDA graphs, all captured at replica start, "
        "for batches of 1 to this many images (and prompts); larger batches run without graphs. 0 turns them off.",
    )


class VerifierUpdate(BaseModel):
    """The verifier's `user_config`: decision settings applied to running replicas, without reloading models."""

    model_config = ConfigDict(extra="forbid")

    min_ensemble_score: float | None = Field(None, description="Replaces `verifier.min_ensemble_score`.")
    distractors: list[str] | None = Field(None, description="Replaces `verifier.distractors`.")
    policy: PolicyConfig | None = Field(None, description="Replaces `verifier.policy`.")
    calibration: dict[str, Calibration] = Field(
        {}, description="Model name to calibration block, e.g. what `python -m deployments.calibrate` measured."
    )

    def apply_to(self, config: VerifierConfig) -> VerifierConfig:
        names = {model.name for model in config.models}
        if unknown := set(self.calibration) - names:
            raise ValueError(f"calibration: no such verifier model: {', '.join(sorted(unknown))}")
        models = [
            model.model_copy(update={"calibration": self.calibration.get(model.name, model.calibration)})
            for model in config.models
        ]
        decisions = self.model_dump(include={"min_ensemble_score", "distractors", "policy"}, exclude_none=True)
        return VerifierConfig.model_validate({**config.model_dump(), **decisions, "models": models})


class BatchLimits(BaseModel):
    """How one deployment batches concurrent requests."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(
        ge=1,
        description="The generator: images per forward pass (a request for more runs alone, in passes of this "
        "many where the generator compiles or captures). The verifier: requests per pass. 1 serves each request "
        "alone.",
    )
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0,
        description="How long a request that finds the deployment idle waits for company. Under load, batches "
        "fill from the requests that arrive while one runs, without waiting.",
    )


class BatchingConfig(BaseModel):
    """Batching of the two GPU deployments."""

    model_config = ConfigDict(extra="forbid")

    generator: BatchLimits = Field(
        default_factory=lambda: BatchLimits(max_batch_size=4),
        description="Requests with the same size, steps and negative prompt share one forward pass while their "
        "images fit in `max_batch_size`. With `flux.compile` or `flux.cuda_graphs`, a replica compiles and "
        "captures every size at every batch size before it serves, and runs a request for more images in parts "
        "of `max_batch_size`. Each batch size costs every replica's start one capture per size: on an H200 the fp8 "
        "profile warmed up in 5.1-5.7 s with batches of up to 2, 7.8-12.6 s with batches of 4, and served 9.5% "
        "fewer images per second at 512x512 at saturation (docs/performance.md).",
    )
    verifier: BatchLimits = Field(
        default_factory=lambda: BatchLimits(max_batch_size=16),
        description="Verification requests share one pass through each CLIP model.",
    )

    @field_validator("generator", "verifier", mode="before")
    @classmethod
    def _over_the_defaults(cls, value: object, info: ValidationInfo) -> object:
        """A block changes what it names; the rest keeps this deployment's defaults (4 or 16 per batch)."""
        if isinstance(value, dict):
            default = cls.model_fields[info.field_name].get_default(call_default_factory=True)
            return {**default.model_dump(), **value}
        return value


class ImageLimits(BaseModel):
    """What requests the service accepts."""

    model_config = ConfigDict(extra="forbid")

    sizes: list[str] = Field(
        ["512x512", "768x768", "1024x1024", "768x1024", "1024x768"],
        min_length=1,
        description="WIDTHxHEIGHT sizes offered, the first the default (a request's `size: auto`); each side a "
        "multiple of 16 within flux.min_side..max_side.",
    )
    max_images: int = Field(
        4,
        ge=1,
        description="Largest `n` of a request. Above batching.generator.max_batch_size its images are generated in "
        "parts of that many per transformer pass (where the generator compiles or captures; otherwise in one).",
    )
    default_steps: int = Field(4, ge=1, description="Denoising steps when a request names neither steps nor quality.")
    max_steps: int = Field(8, ge=1, description="Largest `num_inference_steps` of a request.")
    quality_steps: dict[Literal["low", "medium", "high"], int] = Field(
        {"low": 1, "medium": 2, "high": 4},
        description="Denoising steps for a request's `quality` (xhigh, max and hd count as high; auto and "
        "standard take `default_steps`). FLUX.1-schnell is distilled for 1-4 steps.",
    )
    max_prompt_chars: int = Field(2000, ge=1, description="Longest prompt, in characters.")
    max_prompt_bytes: int = Field(
        4000, ge=1, description="Longest prompt or negative prompt in UTF-8 bytes; an emoji counts 4."
    )
    max_body_bytes: int = Field(16_384, ge=1, description="HTTP request body size; larger bodies get 413.")

    def shapes(self) -> list[tuple[int, int]]:
        """(width, height) of every offered size."""
        return [width_height(size) for size in self.sizes]

    def check(self, request: ImageRequest) -> tuple[int, int, int]:
        """Raise `InvalidRequestError` for what the schema cannot know; return (width, height, steps)."""
        size = self.sizes[0] if request.size == "auto" else request.size
        if size not in self.sizes:
            raise InvalidRequestError("size", f"must be auto or one of {', '.join(self.sizes)}; got {size!r}")
        if request.n > self.max_images:
            raise InvalidRequestError("n", f"must be at most {self.max_images}; got {request.n}")
        steps = request.num_inference_steps or self._quality_steps(request.quality)
        if steps > self.max_steps:
            raise InvalidRequestError("num_inference_steps", f"must be at most {self.max_steps}; got {steps}")
        if len(request.prompt) > self.max_prompt_chars:
            raise InvalidRequestError("prompt", f"must be at most {self.max_prompt_chars} characters")
        if len(request.prompt.encode()) > self.max_prompt_bytes:
            raise InvalidRequestError("prompt", f"must be at most {self.max_prompt_bytes} bytes in UTF-8")
        if request.negative_prompt and len(request.negative_prompt.encode()) > self.max_prompt_bytes:
            raise InvalidRequestError("negative_prompt", f"must be at most {self.max_prompt_bytes} bytes in UTF-8")
        width, height = width_height(size)
        return width, height, steps

    def _quality_steps(self, quality: str) -> int:
        if quality in ("auto", "standard"):
            return self.default_steps
        return self.quality_steps.get(quality, self.quality_steps["high"])  # xhigh, max, hd

    def quality(self, steps: int) -> str:
        """The quality a number of steps amounts to: the highest whose steps it reaches."""
        reached = [name for name in ("low", "medium", "high") if steps >= self.quality_steps[name]]
        return reached[-1] if reached else "low"

    @field_validator("quality_steps")
    @classmethod
    def _every_quality_has_steps(cls, quality_steps: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        most = info.data.get("max_steps", 1)
        if set(quality_steps) != {"low", "medium", "high"} or not all(1 <= n <= most for n in quality_steps.values()):
            raise ValueError(f"needs low, medium and high, each 1 to max_steps ({most}) steps")
        return quality_steps


def width_height(size: str) -> tuple[int, int]:
    """ "WIDTHxHEIGHT" as (width, height)."""
    width, height = size.split("x")
    return int(width), int(height)


class AuthConfig(BaseModel):
    """API keys (bearer tokens). On unless `disabled: true` is written out."""

    model_config = ConfigDict(extra="forbid")

    disabled: bool = Field(False, description="Serve without keys (the CPU profile does).")
    keys_env: str | None = Field(
        "VORTEX_API_KEYS", description="Environment variable of the replicas with comma-separated keys."
    )
    keys_file: str | None = Field(None, description="File with one key per line.")


class ServingConfig(BaseModel):
    """How the ingress serves a request."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(3, ge=1, description="Generations per image slot until one passes verification.")
    request_timeout_s: float = Field(120.0, gt=0, description="A request taking longer fails with 504.")
    retry_after_s: int = Field(5, ge=1, description="Sent as Retry-After with the service's 503s.")
    max_concurrent_requests: int = Field(
        256,
        ge=1,
        description="Requests one Ingress replica serves at once; more are refused at once with a JSON 503. "
        "Keep it below the Ingress's Ray `max_ongoing_requests`, so that the application, not Ray's proxy "
        "(plain text), answers an overload.",
    )
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys.")


class AppArgs(BaseModel):
    """Everything under `args:` in a Serve config; Ray validates it against this model."""

    model_config = ConfigDict(extra="forbid")

    flux: FluxConfig = Field(default_factory=FluxConfig, description="The generator's engine.")
    verifier: VerifierConfig = Field(default_factory=VerifierConfig, description="The verifier's engine and rule.")
    batching: BatchingConfig = Field(default_factory=BatchingConfig, description="Request batching per deployment.")
    limits: ImageLimits = Field(default_factory=ImageLimits, description="What requests are accepted.")
    serving: ServingConfig = Field(default_factory=ServingConfig, description="Retries, timeouts and API keys.")

    @model_validator(mode="after")
    def _sizes_fit_the_generator(self) -> "AppArgs":
        """A size the API offers but the engine refuses would fail every such request at the GPU."""
        for size, sides in zip(self.limits.sizes, self.limits.shapes(), strict=True):
            if any(side % 16 or not self.flux.min_side <= side <= self.flux.max_side for side in sides):
                raise ValueError(
                    f"limits.sizes: {size} is not two multiples of 16 within flux.min_side..flux.max_side "
                    f"({self.flux.min_side}..{self.flux.max_side})"
                )
        return self

    @model_validator(mode="after")
    def _every_shape_is_warmed_up(self) -> "AppArgs":
        """No request pays for compilation: a generator replica compiles and captures every size it offers at
        every batch size it forms before it serves, and refuses to start where that cannot be done."""
        batch = self.batching.generator.max_batch_size  # a request for more images runs in parts of this many
        shapes = len(self.limits.sizes) * batch
        if self.flux.cuda_graphs and self.flux.cuda_graphs < shapes:
            raise ValueError(
                f"flux.cuda_graphs: {self.flux.cuda_graphs} graphs cannot hold the {shapes} shapes a replica serves "
                f"(limits.sizes: {len(self.limits.sizes)} x batching.generator.max_batch_size: {batch}); set "
                f"cuda_graphs: {shapes}, or offer fewer sizes or smaller batches"
            )
        return self

    @model_validator(mode="after")
    def _verifier_is_calibrated(self) -> "AppArgs":
        if missing := [model.name for model in self.verifier.models if model.calibration is None]:
            raise ValueError(
                f"verifier.models: {', '.join(missing)} need a `calibration` block; "
                "`python -m deployments.calibrate` measures it on your own images"
            )
        return self


# --- The configuration reference, generated from the models above ---

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("args", AppArgs),
    ("args.flux", FluxConfig),
    ("args.verifier", VerifierConfig),
    ("args.verifier.models[]", ClipModelConfig),
    ("args.verifier.models[].calibration", Calibration),
    ("args.verifier.policy", PolicyConfig),
    ("args.verifier.policy.concepts[]", ConceptConfig),
    ("args.batching", BatchingConfig),
    ("args.batching.generator, args.batching.verifier", BatchLimits),
    ("args.limits", ImageLimits),
    ("args.serving", ServingConfig),
    ("args.serving.auth", AuthConfig),
    ("ClipVerifier user_config", VerifierUpdate),
]


def _type_name(annotation) -> str:
    origin, arguments = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{value}`" for value in arguments)
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_name(argument) for argument in arguments)
    if origin is list:
        return f"list of {_type_name(arguments[0])}"
    if origin is dict:
        return f"map of {_type_name(arguments[0])} to {_type_name(arguments[1])}"
    if annotation is type(None):
        return "null"
    return annotation.__name__


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel) or (isinstance(value, list) and value and isinstance(value[0], BaseModel)):
        return "see Defaults"
    return f"`{yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix('...').strip()}`"


def configuration_reference() -> str:
    """docs/configuration.md: every field with its type, default and description, and every default as YAML."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `deployments/config.py` by `python -m deployments.config docs/configuration.md`;",
        "a test fails when this file is stale. Unknown keys are refused, naming the field. A Serve config's",
        "`deployments:` entries (replicas, `ray_actor_options`, autoscaling) are Ray Serve's own options:",
        "see the README.",
    ]
    for path, model in SECTIONS:
        lines += ["", f"## `{path}`", "", (model.__doc__ or "").strip(), "", "| key | type | default | meaning |"]
        lines.append("|---|---|---|---|")
        for name, field in model.model_fields.items():
            lines.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {field.description} |")
    defaults = yaml.safe_dump(AppArgs().model_dump(mode="json"), sort_keys=False, width=100)
    lines += ["", "## Defaults", "", "`args:` as the code fills it in when a config leaves everything out:", ""]
    lines += ["```yaml", defaults.rstrip(), "```", ""]
    lines += ["## `deployments:`", "", "Ray Serve's own options; an option a config sets replaces its default.", ""]
    lines += [
        "| deployment | `ray_actor_options` | `max_ongoing_requests` | `max_queued_requests` "
        "| `graceful_shutdown_timeout_s` |"
    ]
    lines.append("|---|---|---|---|---|")
    for deployment in application_deployments():
        options = json.dumps(deployment.ray_actor_options)
        queued = deployment.max_queued_requests if deployment.max_queued_requests >= 0 else "no limit"
        drain = deployment._deployment_config.graceful_shutdown_timeout_s
        lines.append(f"| {deployment.name} | `{options}` | {deployment.max_ongoing_requests} | {queued} | {drain} |")
    return "\n".join(lines) + "\n"


def application_deployments() -> list:
    """The application's deployments (imported here: this module itself needs only pydantic)."""
    from deployments.generator import FluxGenerator
    from deployments.ingress import Ingress
    from deployments.verifier import ClipVerifier

    return [Ingress, FluxGenerator, ClipVerifier]


def main() -> None:
    """`python -m deployments.config [PATH]`: write the configuration reference (to stdout without PATH)."""
    reference = configuration_reference()
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(reference)
    else:
        sys.stdout.write(reference)


if __name__ == "__main__":
    main()
