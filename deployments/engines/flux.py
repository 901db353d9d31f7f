"""FLUX.1-schnell engine: load the diffusers pipeline once, turn prompts and seeds into pixels.

Plain PyTorch and diffusers; no Ray. The deployment in `deployments/generator.py` wraps it.
"""

import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.engines.common import TORCH_DTYPES, ModelFilesMissingError, resolve_device
from deployments.engines.random_models import full_size_flux_pipeline, tiny_flux_pipeline

logger = logging.getLogger(__name__)

DTYPES = {**TORCH_DTYPES, "nf4": torch.bfloat16}  # NF4 computes in bf16
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's range
GIB = 2**30


class FluxConfig(BaseModel):
    """How the generator loads and runs FLUX.1-schnell; the `flux:` block of the application args."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("black-forest-labs/FLUX.1-schnell", description="Hub id or local diffusers folder.")
    random_weights: Literal["tiny", "full"] | None = Field(
        None,
        description="Build the architecture in code with seeded random weights instead of loading `model`: "
        "'tiny' for the CPU profile, 'full' (FLUX.1-schnell's size) for GPU benchmarks.",
    )
    cache_dir: str | None = Field(None, description="Hugging Face cache folder for hub downloads.")
    offline: bool = Field(False, description="Never touch the network; load only files already on disk.")
    precision: Literal["bf16", "fp16", "fp32", "nf4"] = Field(
        "bf16", description="nf4: bitsandbytes 4-bit NF4 transformer with bf16 compute (CUDA only)."
    )
    t5_nf4: bool = Field(False, description="With nf4, also quantize T5 (transformers keeps its `wo` layers bf16).")
    nf4_double_quant: bool = Field(False, description="With nf4, also quantize the quantization constants.")
    cpu_offload: bool = Field(
        False, description="diffusers model CPU offload: each component is on the GPU only while it runs."
    )
    device: str = Field("auto", description="'auto' picks CUDA when present, else CPU.")
    max_sequence_length: int = Field(256, ge=1, le=256, description="T5 tokens; FLUX.1-schnell allows 256.")
    true_cfg_scale: float = Field(
        4.0, gt=1.0, description="Used only with a negative prompt: true CFG, two transformer passes per step."
    )
    compile: Literal["none", "regional"] = Field(
        "none",
        description="regional: torch.compile of the transformer's repeated blocks (about 15-20 s at start on an "
        "H100, then fewer kernel launches per step); the replica warms it up before serving.",
    )
    fuse_qkv: bool = Field(False, description="Fuse the attention Q/K/V projections into one GEMM each.")
    min_side: int = Field(256, ge=16, multiple_of=16, description="Smallest width or height accepted.")
    max_side: int = Field(1536, ge=16, multiple_of=16, description="Largest width or height accepted.")

    @model_validator(mode="after")
    def _random_weights_are_built_not_loaded(self) -> "FluxConfig":
        if self.random_weights and (self.precision == "nf4" or self.t5_nf4 or self.cpu_offload):
            raise ValueError(
                "random_weights builds the model in memory; nf4, t5_nf4 and cpu_offload need the loading path. "
                "Save it first (python -m deployments.engines.random_models PATH) and set `model: PATH`."
            )
        return self


class FluxOutOfMemoryError(RuntimeError):
    """CUDA ran out of memory; the engine has freed what it could and serves the next request."""

    def __init__(self, stage: str, allocated_bytes: int, total_bytes: int) -> None:
        self.stage = stage
        self.allocated_bytes = allocated_bytes
        self.total_bytes = total_bytes
        super().__init__(
            f"CUDA out of memory during {stage}: {allocated_bytes / GIB:.2f} GiB allocated of "
            f"{total_bytes / GIB:.2f} GiB on the GPU. Ask for fewer or smaller images, or lower the "
            "replica's footprint: `precision: nf4`, `t5_nf4: true`, `cpu_offload: true`, or fewer "
            "replicas per GPU."
        )

    def __reduce__(self):
        return type(self), (self.stage, self.allocated_bytes, self.total_bytes)


def missing_model_files(folder: Path) -> list[str]:
    """Files a diffusers pipeline folder lacks: configs, tokenizers, and safetensors weights per component."""
    index = folder / "model_index.json"
    if not index.is_file():
        return ["model_index.json"]
    missing = []
    for name, spec in json.loads(index.read_text()).items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        class_name = spec[1]
        if class_name.endswith("Scheduler"):
            required = ["scheduler_config.json"]
        elif "Tokenizer" in class_name:
            required = ["tokenizer_config.json"]
        else:
            required = ["config.json", "*.safetensors"]
        for pattern in required:
            if not any((folder / name).glob(pattern)):
                missing.append(f"{name}/{pattern}")
        for shard_index in (folder / name).glob("*.safetensors.index.json"):
            shards = set(json.loads(shard_index.read_text())["weight_map"].values())
            missing += [f"{name}/{shard}" for shard in sorted(shards) if not (folder / name / shard).is_file()]
    return missing


def local_model_folder(config: FluxConfig) -> Path | None:
    """The folder to load from, checked for completeness; None when the hub may fill in what is missing."""
    folder = Path(config.model).expanduser()
    if not folder.is_dir():
        if not config.offline:
            return None
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            folder = Path(snapshot_download(config.model, cache_dir=config.cache_dir, local_files_only=True))
        except LocalEntryNotFoundError:
            raise ModelFilesMissingError(
                f"offline mode: '{config.model}' is neither a local folder nor in the Hugging Face cache "
                f"({config.cache_dir or 'the default cache'}). Download it once (`hf download {config.model}`"
                " with the same cache dir) or point `flux.model` at a local folder."
            ) from None
    missing = missing_model_files(folder)
    if missing:
        raise ModelFilesMissingError(
            f"{folder} is not a complete FLUX pipeline (safetensors weights only); missing: {', '.join(missing)}"
        )
    return folder


def load_flux_pipeline(config: FluxConfig, device: torch.device) -> FluxPipeline:
    """Build or load the pipeline described by `config`, placed on `device` (or offloaded to it)."""
    dtype = DTYPES[config.precision]
    if config.random_weights == "tiny":
        pipe = tiny_flux_pipeline()  # built in fp32
        return pipe.to(device) if dtype == torch.float32 else pipe.to(device, dtype)
    if config.random_weights == "full":
        return full_size_flux_pipeline(device=device, dtype=dtype)

    folder = local_model_folder(config)
    source = str(folder or config.model)
    common = {"cache_dir": config.cache_dir, "local_files_only": config.offline, "use_safetensors": True}
    components = {}
    if config.precision == "nf4":
        from diffusers import BitsAndBytesConfig
        from transformers import BitsAndBytesConfig as TransformersBitsAndBytesConfig
        from transformers import T5EncoderModel

        nf4 = {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_compute_dtype": torch.bfloat16,
            "bnb_4bit_use_double_quant": config.nf4_double_quant,
        }
        components["transformer"] = FluxTransformer2DModel.from_pretrained(
            source, subfolder="transformer", quantization_config=BitsAndBytesConfig(**nf4), dtype=dtype, **common
        )
        if config.t5_nf4:
            components["text_encoder_2"] = T5EncoderModel.from_pretrained(
                source,
                subfolder="text_encoder_2",
                quantization_config=TransformersBitsAndBytesConfig(**nf4),
                dtype=dtype,
                **common,
            )
    pipe = FluxPipeline.from_pretrained(source, **components, dtype=dtype, **common)
    pipe.set_progress_bar_config(disable=True)
    if config.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def optimize_pipeline(pipe: FluxPipeline, config: FluxConfig) -> None:
    """Apply the speed options of `config` to a loaded pipeline, in place."""
    if config.fuse_qkv:
        pipe.transformer.fuse_qkv_projections()
    if config.compile == "regional":
        pipe.transformer.compile_repeated_blocks(fullgraph=True)


def to_uint8_pixels(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] floats in [0, 1] -> [N, H, W, 3] uint8 on the CPU, rounded as PIL conversion expects."""
    return (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class FluxEngine:
    """One FluxPipeline on one device; each call is seeded per image, never from global RNG state."""

    def __init__(self, pipe: FluxPipeline, config: FluxConfig, device: torch.device) -> None:
        self.pipe = pipe
        self.config = config
        self.device = device
        self._lock = threading.Lock()  # the pipeline's scheduler keeps per-call state: one call at a time

    @classmethod
    def load(cls, config: FluxConfig) -> "FluxEngine":
        device = resolve_device(config.device)
        start = time.perf_counter()
        try:
            pipe = load_flux_pipeline(config, device)
            optimize_pipeline(pipe, config)
        except torch.cuda.OutOfMemoryError:
            pipe = None  # leave the handler so the failed load's tensors can be freed
        if pipe is None:
            raise _out_of_memory("model load", device)
        vram = f", {torch.cuda.memory_allocated(device) / GIB:.2f} GiB VRAM allocated" if device.type == "cuda" else ""
        logger.info(
            "Loaded Flux (%s, %s%s%s) on %s in %.1f s%s",
            config.random_weights or config.model,
            config.precision,
            ", T5 nf4" if config.t5_nf4 else "",
            ", CPU offload" if config.cpu_offload else "",
            device,
            time.perf_counter() - start,
            vram,
        )
        engine = cls(pipe, config, device)
        if config.compile != "none":
            start = time.perf_counter()
            side = min(max(512, config.min_side), config.max_side)
            engine.generate("warm-up", seeds=[0], width=side, height=side, steps=4)  # compile now, not on a request
            logger.info("Compiled Flux (%s) in %.1f s", config.compile, time.perf_counter() - start)
        return engine

    def _check(
        self, prompts: list[str], seeds: Sequence[int], width: int, height: int, steps: int, guidance: float
    ) -> None:
        if any(not prompt.strip() for prompt in prompts):
            raise ValueError("prompt: must not be empty or whitespace")
        if not seeds:
            raise ValueError("seeds: at least one seed is needed")
        if len(prompts) != len(seeds):
            raise ValueError(f"prompt: {len(prompts)} prompts for {len(seeds)} seeds")
        if any(not 0 <= seed <= MAX_SEED for seed in seeds):
            raise ValueError(f"seeds: each must be within 0..{MAX_SEED}")
        low, high = self.config.min_side, self.config.max_side
        for name, value in (("width", width), ("height", height)):
            if value % 16 or not low <= value <= high:
                raise ValueError(f"{name}: must be a multiple of 16 within {low}..{high}, got {value}")
        if steps < 1:
            raise ValueError(f"steps: must be at least 1, got {steps}")
        if guidance < 0:
            raise ValueError(f"guidance: must not be negative, got {guidance}")

    def _warn_if_truncated(self, prompt: str) -> None:
        """Say how much of a long prompt each text encoder reads, counted by the real tokenizers."""
        for name, tokenizer, limit in (
            ("CLIP", self.pipe.tokenizer, self.pipe.tokenizer.model_max_length),
            ("T5", self.pipe.tokenizer_2, self.config.max_sequence_length),
        ):
            count = len(tokenizer(prompt, verbose=False).input_ids)
            if count > limit:
                logger.warning("Prompt is %d %s tokens; %s reads only the first %d.", count, name, name, limit)

    @torch.inference_mode()
    def generate(
        self,
        prompt: str | Sequence[str],
        *,
        seeds: Sequence[int],
        width: int = 512,
        height: int = 512,
        steps: int = 4,
        guidance: float = 0.0,
        negative_prompt: str | None = None,
        out: torch.Tensor | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """One image per seed, as floats in [0, 1] shaped [len(seeds), 3, height, width].

        `prompt` is one prompt for every image, or one per seed (requests batched together).
        `negative_prompt` runs true classifier-free guidance (two transformer passes per step).
        With `out` ([N, 3, H, W], or [3, H, W] for one seed) the images are written into it and it
        is returned. `on_step(step, steps)` is called after each denoising step (1-based).
        """
        prompts = [prompt] * max(1, len(seeds)) if isinstance(prompt, str) else list(prompt)
        self._check(prompts, seeds, width, height, steps, guidance)
        for text in dict.fromkeys(prompts):
            self._warn_if_truncated(text)
        expected = (len(seeds), 3, height, width)
        if out is not None and tuple(out.shape) not in (expected, expected[1:] if len(seeds) == 1 else None):
            raise ValueError(f"out: expected shape {list(expected)}, got {list(out.shape)}")
        negatives = [negative_prompt] * len(seeds)
        true_cfg = {"negative_prompt": negatives, "true_cfg_scale": self.config.true_cfg_scale}
        progress = {"callback_on_step_end": _step_callback(on_step, steps)} if on_step else {}
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        images = None
        with self._lock:
            try:
                images = self.pipe(
                    prompts,
                    num_images_per_prompt=1,
                    generator=generators,
                    width=width,
                    height=height,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    max_sequence_length=self.config.max_sequence_length,
                    output_type="pt",
                    **(true_cfg if negative_prompt else {}),
                    **progress,
                ).images
            except torch.cuda.OutOfMemoryError:
                pass  # leave the handler first: its traceback pins the tensors we need to free
            if images is None:
                raise _out_of_memory("generation", self.device)
        if out is None:
            return images
        return out.copy_(images.reshape(out.shape))


def _step_callback(on_step: Callable[[int, int], None], steps: int):
    """diffusers' callback_on_step_end, reporting 1-based steps."""

    def callback(pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        on_step(step_index + 1, steps)
        return callback_kwargs

    return callback


def _out_of_memory(stage: str, device: torch.device) -> FluxOutOfMemoryError:
    """Free what the failed step left behind and describe the GPU's state."""
    gc.collect()
    if device.type != "cuda":  # CUDA OOM on a CPU engine only comes from an offloaded or injected fault
        return FluxOutOfMemoryError(stage, 0, 0)
    torch.cuda.empty_cache()
    _, total = torch.cuda.mem_get_info(device)
    return FluxOutOfMemoryError(stage, torch.cuda.memory_allocated(device), total)
