"""Dual-CLIP verifier engine: does each image show its prompt, and does it break the content policy?

Plain PyTorch and open_clip; no Ray. The deployment in `deployments/verifier.py` wraps it.

How a verdict is reached, per image (every number is a cosine similarity of unit-norm embeddings):
1. Prompt match. Each model's raw cosine is mapped to a calibrated score,
   `(cosine - threshold) / (matched_mean - mismatched_mean)`: 0 at that model's threshold, +1 one
   matched-vs-mismatched gap above it. Raw cosines of a matching pair sit around 0.25-0.35, so a
   fixed threshold like 0.7 would reject everything; thresholds come from `deployments.calibrate`.
   The ensemble score is the weighted mean of the calibrated scores and must reach `min_ensemble_score`.
2. Relative check. The prompt must outscore every distractor caption ("random noise", ...): the
   weighted mean over models of (prompt cosine - best distractor cosine) must be positive.
3. Content policy. For each banned concept, the weighted mean over models of (best concept-caption
   cosine - best neutral-caption cosine) is compared to that concept's threshold; at or above it the
   image is flagged, and flagged images are withheld from callers.
An image passes when 1 and 2 hold and 3 flags nothing.
"""

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import open_clip
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from deployments.api import Rejection, RejectionKind, Verification
from deployments.config import ClipModelConfig, VerifierConfig
from deployments.engines.common import TORCH_DTYPES, ModelFilesMissingError, check_device, out_of_memory, resolve_device
from deployments.engines.cuda_graphs import CudaGraphRunner

logger = logging.getLogger(__name__)

# Random-weight open_clip models for the CPU profile and tests: `tiny-clip-a`, `tiny-clip-b`.
TINY_CLIP_CONFIGS = Path(__file__).with_name("tiny_clip_configs")
OUT_OF_MEMORY_ADVICE = "Give the verifier more of the GPU (`num_gpus`, `vram_gb`) or lower batching.verifier."


@dataclass
class ReferenceTexts:
    """One model's embeddings of the fixed captions, computed once at load."""

    distractors: torch.Tensor | None  # [K, D]; None without distractors
    neutral: torch.Tensor  # [M, D]
    concepts: list[torch.Tensor]  # per concept [C, D]


def decide(
    config: VerifierConfig,
    image_features: dict[str, torch.Tensor],
    prompt_features: dict[str, torch.Tensor],
    references: dict[str, ReferenceTexts],
) -> list[Verification]:
    """Verdicts for N images from unit-norm embeddings keyed by model name: images [N, D], prompts [N, D]."""
    if missing := [model.name for model in config.models if model.calibration is None]:
        raise ValueError(f"calibration: missing for {', '.join(missing)}; run python -m deployments.calibrate")
    weights = {model.name: model.weight for model in config.models}
    total = sum(weights.values())

    def ensemble(per_model: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(weights[name] * values for name, values in per_model.items()) / total

    def best_match(name: str, captions: torch.Tensor) -> torch.Tensor:
        return (image_features[name] @ captions.T).max(-1).values

    cosines = {name: (image_features[name] * prompt_features[name]).sum(-1) for name in weights}
    margins = None
    if config.distractors:
        distractor_cosines = {name: image_features[name] @ references[name].distractors.T for name in weights}
        margins = ensemble({name: cosines[name] - distractor_cosines[name].max(-1).values for name in weights})
    neutral = {name: best_match(name, references[name].neutral) for name in weights}
    concept_scores = [
        ensemble({name: best_match(name, references[name].concepts[c]) - neutral[name] for name in weights})
        for c in range(len(config.policy.concepts))
    ]

    verdicts = []
    for i in range(next(iter(image_features.values())).shape[0]):
        scores = {model.name: float(cosines[model.name][i]) for model in config.models}
        calibrated = {model.name: model.calibration.calibrated(scores[model.name]) for model in config.models}
        ensemble_score = sum(weights[name] * value for name, value in calibrated.items()) / total
        rejections = []
        if ensemble_score < config.min_ensemble_score:
            detail = ", ".join(
                f"{model.name}: cosine {scores[model.name]:.3f} vs threshold {model.calibration.threshold:.3f}"
                for model in config.models
            )
            reason = f"ensemble score {ensemble_score:.2f} below {config.min_ensemble_score:.2f} ({detail})"
            rejections.append(Rejection(kind=RejectionKind.PROMPT_MISMATCH, reason=reason))
        margin = None if margins is None else float(margins[i])
        if margin is not None and margin <= 0:
            per_caption = ensemble({name: distractor_cosines[name][i] for name in weights})
            caption = config.distractors[int(per_caption.argmax())]
            reason = f"the distractor caption '{caption}' matches the image better than the prompt"
            rejections.append(Rejection(kind=RejectionKind.DISTRACTOR, reason=reason))
        for concept, score in zip(config.policy.concepts, concept_scores, strict=True):
            if float(score[i]) >= concept.threshold:
                reason = f"content policy: {concept.name} ({float(score[i]):.3f} >= {concept.threshold:.3f})"
                rejections.append(Rejection(kind=RejectionKind.CONTENT_POLICY, reason=reason, concept=concept.name))
        verdicts.append(
            Verification(
                scores=scores,
                calibrated_scores=calibrated,
                ensemble_score=ensemble_score,
                distractor_margin=margin,
                rejections=rejections,
            )
        )
    return verdicts


def cached_clip_weights(spec: ClipModelConfig, cache_dir: str | None) -> str | None:
    """Local weights for `spec` without touching the network; raises if a weight tag is not cached."""
    if spec.pretrained is None or os.path.isfile(spec.pretrained):
        return spec.pretrained
    from huggingface_hub import try_to_load_from_cache

    pretrained_cfg = open_clip.get_pretrained_cfg(spec.name, spec.pretrained)
    if not pretrained_cfg.get("hf_hub"):
        raise ModelFilesMissingError(f"{spec.name} has no hub weights tagged '{spec.pretrained}' in open_clip")
    repo_id, filename = os.path.split(pretrained_cfg["hf_hub"])
    candidates = ["open_clip_model.safetensors", filename or "open_clip_pytorch_model.bin"]
    for candidate in candidates:
        path = try_to_load_from_cache(repo_id, candidate, cache_dir=cache_dir)
        if isinstance(path, str):
            return path
    raise ModelFilesMissingError(
        f"offline mode: CLIP weights {spec.name}/{spec.pretrained} are not in the Hugging Face cache "
        f"({cache_dir or 'the default cache'}); expected {repo_id}/{candidates[0]}. Download it once "
        f"(`hf download {repo_id} {candidates[0]}` with the same cache dir) or set `pretrained` to a local file."
    )


@dataclass(frozen=True)
class ImagePreprocessing:
    """open_clip's eval-time image preprocessing for one model, as batched tensor ops on any device.

    Read from the model's own config (`open_clip.get_model_preprocess_cfg`), so it follows the same steps as the
    PIL transform of `create_model_and_transforms`: resize (bicubic or bilinear, antialiased), center crop (or pad,
    in 'longest' mode), scale to [0, 1], normalize. The resize takes uint8 pixels and rounds back to uint8, as PIL
    does. On CPU, torch's uint8 antialiased kernel is Pillow's: under 3% of values differ, by 1-2 grey levels. On
    CUDA it resizes in float and rounds once, where Pillow rounds after each pass: 6-23% of values differ by one
    level (mean 0.06-0.26 levels), and a few pixels of pure noise by up to about 20.
    """

    size: tuple[int, int]  # (height, width) the model takes
    resize_mode: Literal["shortest", "longest", "squash"]
    interpolation: InterpolationMode
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_config(cls, cfg: dict) -> "ImagePreprocessing":
        """From an open_clip preprocess config (keys as in `open_clip.transform.PreprocessCfg`)."""
        if cfg.get("mode", "RGB") != "RGB" or cfg.get("fill_color", 0) != 0:
            raise ValueError(f"unsupported open_clip preprocessing {cfg}: only RGB input with zero padding")
        size = cfg["size"]
        mean, std = cfg["mean"], cfg["std"]
        return cls(
            size=(size, size) if isinstance(size, int) else tuple(size),
            resize_mode=cfg.get("resize_mode", "shortest"),
            # as open_clip's image_transform: 'bilinear' is bilinear, anything else ('bicubic', 'random') bicubic
            interpolation=InterpolationMode.BILINEAR
            if cfg.get("interpolation") == "bilinear"
            else InterpolationMode.BICUBIC,
            mean=tuple(mean) if isinstance(mean, list | tuple) else (mean,) * 3,
            std=tuple(std) if isinstance(std, list | tuple) else (std,) * 3,
        )

    @classmethod
    def of(cls, model: torch.nn.Module) -> "ImagePreprocessing":
        return cls.from_config(open_clip.get_model_preprocess_cfg(model))

    def resize_to(self, height: int, width: int) -> list[int]:
        """The `size` argument of the resize step for a height x width image, with open_clip's rounding."""
        target_height, target_width = self.size
        if self.resize_mode == "squash":
            return [target_height, target_width]
        if self.resize_mode == "shortest" and target_height == target_width:
            return [target_height]  # torchvision's Resize(int), as open_clip: short side to size, long side floored
        # open_clip's ResizeKeepRatio (its PIL transform resizes bicubic here whatever `interpolation` says)
        ratios = height / target_height, width / target_width
        ratio = max(ratios) if self.resize_mode == "longest" else min(ratios)
        return [round(height / ratio), round(width / ratio)]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, H, W] -> normalized float32 [N, 3, *size], on the images' device."""
        pixels = TF.resize(images, self.resize_to(*images.shape[-2:]), self.interpolation, antialias=True)
        pixels = TF.center_crop(pixels, list(self.size))  # pads with 0 where smaller ('longest' mode)
        return TF.normalize(TF.to_dtype(pixels, torch.float32, scale=True), list(self.mean), list(self.std))


Encoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LoadedClip:
    config: ClipModelConfig
    model: torch.nn.Module
    preprocessing: ImagePreprocessing
    tokenizer: object
    references: ReferenceTexts
    # The model's encoders, or their CUDA graph replays: what requests run.
    encode_image: Encoder
    encode_text: Encoder


@torch.inference_mode()
def encode_texts(encode_text: Encoder, tokenizer, texts: list[str], device: torch.device) -> torch.Tensor:
    """Unit-norm text embeddings [len(texts), D] in fp32."""
    return torch.nn.functional.normalize(encode_text(tokenizer(texts).to(device)).float(), dim=-1)


def reference_texts(model: torch.nn.Module, tokenizer, config: VerifierConfig, device: torch.device) -> ReferenceTexts:
    """Caption embeddings, computed once per configuration with the plain (ungraphed) encoder."""
    encode = model.encode_text
    return ReferenceTexts(
        distractors=encode_texts(encode, tokenizer, config.distractors, device) if config.distractors else None,
        neutral=encode_texts(encode, tokenizer, config.policy.neutral_captions, device),
        concepts=[encode_texts(encode, tokenizer, c.captions, device) for c in config.policy.concepts],
    )


@torch.inference_mode()
def capture_batch_sizes(clip: LoadedClip, batch_sizes: Sequence[int], dtype: torch.dtype, device: torch.device) -> None:
    """Capture both encoders' graphs for these batch sizes, before serving."""
    for size in batch_sizes:
        clip.encode_image(torch.zeros((size, 3, *clip.preprocessing.size), device=device, dtype=dtype))
        clip.encode_text(clip.tokenizer(["a photo"] * size).to(device))


class ClipEngine:
    """Embeds images and prompts with every configured CLIP model and decides with `decide`."""

    def __init__(self, config: VerifierConfig, models: list[LoadedClip], device: torch.device, precision: str) -> None:
        self.config = config
        self.models = models
        self.device = device
        self.dtype = TORCH_DTYPES[precision]  # open_clip keeps LayerNorm and logit_scale in fp32

    @classmethod
    def load(cls, config: VerifierConfig) -> "ClipEngine":
        """Load every model; with `cuda_graphs`, capture batches of 1 to `cuda_graphs` images and prompts now:
        every graph the runners can hold, so none is captured on a request."""
        open_clip.add_model_config(TINY_CLIP_CONFIGS)
        device = resolve_device(config.device)
        if config.cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs: CUDA graphs need a CUDA device; the verifier runs on {device}; set 0")
        precision = config.precision
        if precision == "auto":
            precision = "fp16" if device.type == "cuda" else "fp32"
        models = []
        for seed, spec in enumerate(config.models):
            start = time.perf_counter()
            pretrained = cached_clip_weights(spec, config.cache_dir) if config.offline else spec.pretrained
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # random-weight models must be the same in every replica
                model = open_clip.create_model(
                    spec.name,
                    pretrained=pretrained,
                    precision=precision,
                    device=device,
                    cache_dir=config.cache_dir,
                )
            model.eval().requires_grad_(False)
            tokenizer = open_clip.get_tokenizer(spec.name)
            references = reference_texts(model, tokenizer, config, device)
            preprocessing = ImagePreprocessing.of(model)
            clip = LoadedClip(spec, model, preprocessing, tokenizer, references, model.encode_image, model.encode_text)
            if config.cuda_graphs:  # eager, a batch-1 ViT-L/14 is launch-bound
                clip.encode_image = CudaGraphRunner(model.encode_image, config.cuda_graphs)
                clip.encode_text = CudaGraphRunner(model.encode_text, config.cuda_graphs)
                capture_batch_sizes(clip, range(1, config.cuda_graphs + 1), TORCH_DTYPES[precision], device)
            models.append(clip)
            logger.info(
                "Loaded CLIP %s (%s, %s) in %.1f s", spec.name, pretrained, precision, time.perf_counter() - start
            )
        return cls(config, models, device, precision)

    def check_health(self) -> None:
        check_device(self.device)

    def reconfigure(self, config: VerifierConfig) -> None:
        """Take new decision settings (calibration, weights, distractors, policy) without reloading models."""
        if [(m.name, m.pretrained) for m in config.models] != [
            (m.config.name, m.config.pretrained) for m in self.models
        ]:
            raise ValueError("models: changing which CLIP models run needs a redeploy, not a reconfigure")
        for loaded, spec in zip(self.models, config.models, strict=True):
            loaded.config = spec
            loaded.references = reference_texts(loaded.model, loaded.tokenizer, config, self.device)
        self.config = config

    def upload(self, batch: list[tuple[np.ndarray, str]]) -> list[tuple[list[int], torch.Tensor]]:
        """The batch's images on the engine's device, one uint8 [n, 3, H, W] tensor per image size, each with the
        rows (positions in the batch, request after request) its images hold."""
        groups: dict[tuple[int, int], tuple[list[int], list[np.ndarray]]] = {}
        row = 0
        for images, _ in batch:
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"images: expected uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
            rows, arrays = groups.setdefault(images.shape[1:3], ([], []))
            rows.extend(range(row, row + len(images)))
            arrays.append(images)
            row += len(images)
        return [
            (rows, torch.from_numpy(np.concatenate(arrays)).to(self.device).permute(0, 3, 1, 2))
            for rows, arrays in groups.values()
        ]

    @torch.inference_mode()
    def embed(self, batch: list[tuple[np.ndarray, str]]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Unit-norm image and prompt embeddings per model, one row per image: [sum of N, D] each."""
        uploaded = self.upload(batch)
        prompts = [prompt for images, prompt in batch for _ in images]
        unique_prompts = list(dict.fromkeys(prompts))
        rows = [unique_prompts.index(prompt) for prompt in prompts]
        image_features, prompt_features = {}, {}
        preprocessed: dict[ImagePreprocessing, torch.Tensor] = {}  # models with the same preprocessing share it
        for clip in self.models:
            if (pixels := preprocessed.get(clip.preprocessing)) is None:
                groups = [(group_rows, clip.preprocessing(images)) for group_rows, images in uploaded]
                if len(groups) == 1:
                    pixels = groups[0][1]
                else:
                    pixels = torch.empty((len(prompts), 3, *clip.preprocessing.size), device=self.device)
                    for group_rows, group_pixels in groups:
                        pixels[group_rows] = group_pixels
                preprocessed[clip.preprocessing] = pixels
            features = clip.encode_image(pixels.to(self.dtype)).float()
            image_features[clip.config.name] = torch.nn.functional.normalize(features, dim=-1)
            prompts_embedded = encode_texts(clip.encode_text, clip.tokenizer, unique_prompts, self.device)
            prompt_features[clip.config.name] = prompts_embedded[rows]
        return image_features, prompt_features

    def verify(self, batch: list[tuple[np.ndarray, str]], include_embeddings: bool = False) -> list[list[Verification]]:
        """Verdicts for several requests at once: each is (uint8 images [N, H, W, 3], prompt).

        Raises `ValueError` for malformed images and `OutOfGpuMemoryError` when CUDA runs out.
        """
        features = None
        try:
            features = self.embed(batch)
        except torch.cuda.OutOfMemoryError:
            pass  # leave the handler first: its traceback pins the tensors we need to free
        if features is None:
            raise out_of_memory("verification", self.device, OUT_OF_MEMORY_ADVICE)
        image_features, prompt_features = features
        references = {clip.config.name: clip.references for clip in self.models}
        verdicts = decide(self.config, image_features, prompt_features, references)
        if include_embeddings:
            for i, verdict in enumerate(verdicts):
                verdict.embeddings = {name: rows[i].tolist() for name, rows in image_features.items()}
        grouped, start = [], 0
        for images, _ in batch:
            grouped.append(verdicts[start : start + len(images)])
            start += len(images)
        return grouped
