"""Dual-CLIP verifier engine: score generated images against their prompt with open_clip models.

Plain PyTorch and open_clip; no Ray. The deployment in `deployments/verifier.py` wraps it.
"""

import logging
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import open_clip
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from deployments.engines.flux import resolve_device
from deployments.engines.random_models import register_tiny_clip_configs

logger = logging.getLogger(__name__)


class ClipModelConfig(BaseModel):
    """One CLIP model of the ensemble."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="open_clip model name; OpenAI weights need the -quickgelu names.")
    pretrained: str | None = Field(
        description="Weight tag (e.g. 'openai') or local checkpoint path; null builds random weights."
    )
    threshold: float = Field(description="Raw cosine similarity this model must reach for a pass.")
    weight: float = Field(1.0, gt=0, description="Weight in the ensemble score.")


class VerifierConfig(BaseModel):
    """The `verifier:` block of the application args."""

    model_config = ConfigDict(extra="forbid")

    models: list[ClipModelConfig] = Field(min_length=1)
    cache_dir: str | None = None
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: str = "auto"


@dataclass
class Verification:
    """How well one image matches its prompt, per CLIP model and combined."""

    scores: dict[str, float]
    ensemble_score: float
    passed: bool


@dataclass
class _LoadedClip:
    config: ClipModelConfig
    model: torch.nn.Module
    preprocess: object
    tokenizer: object


class ClipEngine:
    """Scores images against a prompt with every configured CLIP model.

    An image passes when each model's cosine similarity reaches that model's threshold; the ensemble
    score is the weighted mean of the cosines.
    """

    def __init__(self, models: list[_LoadedClip], device: torch.device) -> None:
        self.models = models
        self.device = device

    @classmethod
    def load(cls, config: VerifierConfig) -> "ClipEngine":
        register_tiny_clip_configs()
        device = resolve_device(config.device)
        models = []
        for seed, spec in enumerate(config.models):
            start = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # random-weight models must be the same in every replica
                model, _, preprocess = open_clip.create_model_and_transforms(
                    spec.name,
                    pretrained=spec.pretrained,
                    precision=config.precision,
                    device=device,
                    cache_dir=config.cache_dir,
                )
            model.eval().requires_grad_(False)
            models.append(_LoadedClip(spec, model, preprocess, open_clip.get_tokenizer(spec.name)))
            logger.info("Loaded CLIP %s (%s) in %.1f s", spec.name, spec.pretrained, time.perf_counter() - start)
        return cls(models, device)

    @torch.inference_mode()
    def verify(self, images: np.ndarray, prompt: str) -> list[Verification]:
        """Score uint8 images shaped [N, H, W, 3] against one prompt."""
        pil_images = [Image.fromarray(image) for image in images]
        scores: list[dict[str, float]] = [{} for _ in pil_images]
        for clip in self.models:
            dtype = next(clip.model.parameters()).dtype
            pixels = torch.stack([clip.preprocess(image) for image in pil_images]).to(self.device, dtype)
            tokens = clip.tokenizer([prompt]).to(self.device)
            image_features = torch.nn.functional.normalize(clip.model.encode_image(pixels).float(), dim=-1)
            text_features = torch.nn.functional.normalize(clip.model.encode_text(tokens).float(), dim=-1)
            for per_image, cosine in zip(scores, (image_features @ text_features.T).squeeze(1).tolist(), strict=True):
                per_image[clip.config.name] = cosine
        return [self._decide(per_image) for per_image in scores]

    def _decide(self, scores: dict[str, float]) -> Verification:
        total_weight = sum(clip.config.weight for clip in self.models)
        ensemble = sum(clip.config.weight * scores[clip.config.name] for clip in self.models) / total_weight
        passed = all(scores[clip.config.name] >= clip.config.threshold for clip in self.models)
        return Verification(scores=scores, ensemble_score=ensemble, passed=passed)
