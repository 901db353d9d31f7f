"""FLUX.1-schnell engine: load the diffusers pipeline once, turn prompts and seeds into pixels.

Plain PyTorch and diffusers; no Ray. The deployment in `deployments/generator.py` wraps it.
"""

import logging
import threading
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from pydantic import BaseModel, ConfigDict, Field

from deployments.engines.tiny import tiny_flux_pipeline

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class FluxConfig(BaseModel):
    """How the generator loads FLUX.1-schnell; the `flux:` block of the application args."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("black-forest-labs/FLUX.1-schnell", description="Hub id or local diffusers folder.")
    random_weights: Literal["tiny"] | None = Field(
        None, description="Build a tiny random-weight pipeline in code instead of loading `model` (CPU profile)."
    )
    cache_dir: str | None = None
    offline: bool = Field(False, description="Never touch the network; load only files already on disk.")
    precision: Literal["bf16", "fp16", "fp32", "nf4"] = Field(
        "bf16", description="nf4: bitsandbytes 4-bit transformer with bf16 compute (needs a CUDA GPU)."
    )
    device: str = Field("auto", description="'auto' picks CUDA when present, else CPU.")
    max_sequence_length: int = Field(256, ge=1, le=256, description="T5 tokens; FLUX.1-schnell allows 256.")
    true_cfg_scale: float = Field(
        4.0, gt=1.0, description="Used only with a negative prompt: true CFG, two transformer passes per step."
    )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_flux_pipeline(config: FluxConfig, device: torch.device) -> FluxPipeline:
    """Build or load the pipeline described by `config`, on `device`."""
    dtype = DTYPES.get(config.precision, torch.bfloat16)  # nf4 computes in bf16
    if config.random_weights == "tiny":
        pipe = tiny_flux_pipeline()  # built in fp32
        return pipe.to(device) if dtype == torch.float32 else pipe.to(device, dtype)

    common = {
        "cache_dir": config.cache_dir,
        "local_files_only": config.offline,
        "use_safetensors": True,
        "torch_dtype": dtype,
    }
    components = {}
    if config.precision == "nf4":
        from diffusers import BitsAndBytesConfig

        nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        components["transformer"] = FluxTransformer2DModel.from_pretrained(
            config.model, subfolder="transformer", quantization_config=nf4, **common
        )
    pipe = FluxPipeline.from_pretrained(config.model, **components, **common).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


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
        pipe = load_flux_pipeline(config, device)
        logger.info(
            "Loaded Flux (%s, %s) on %s in %.1f s",
            config.random_weights or config.model,
            config.precision,
            device,
            time.perf_counter() - start,
        )
        return cls(pipe, config, device)

    @torch.inference_mode()
    def generate(
        self,
        prompt: str,
        *,
        seeds: Sequence[int],
        width: int = 512,
        height: int = 512,
        steps: int = 4,
        negative_prompt: str | None = None,
    ) -> np.ndarray:
        """Generate one image per seed; returns uint8 pixels shaped [len(seeds), height, width, 3]."""
        if not prompt.strip():
            raise ValueError("prompt: must not be empty")
        if not seeds:
            raise ValueError("seeds: at least one seed is needed")
        for name, value in (("width", width), ("height", height)):
            if value <= 0 or value % 16:
                raise ValueError(f"{name}: must be a positive multiple of 16, got {value}")
        if steps < 1:
            raise ValueError(f"steps: must be at least 1, got {steps}")

        cfg = (
            {"negative_prompt": negative_prompt, "true_cfg_scale": self.config.true_cfg_scale}
            if negative_prompt
            else {}
        )
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        with self._lock:
            images = self.pipe(
                prompt,
                num_images_per_prompt=len(seeds),
                generator=generators,
                width=width,
                height=height,
                num_inference_steps=steps,
                guidance_scale=0.0,
                max_sequence_length=self.config.max_sequence_length,
                output_type="pt",
                **cfg,
            ).images
        return (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
