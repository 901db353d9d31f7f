"""FLUX.1-schnell engine: load the diffusers pipeline once, turn prompts and seeds into pixels.

Plain PyTorch and diffusers; no Ray. The deployment in `deployments/generator.py` wraps it. Loading
is in `flux_loading.py`, speed setups in `flux_speedups.py`; this file is what runs per request.
"""

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence

import numpy as np
import torch
from diffusers import FluxPipeline

from deployments.api import MAX_SEED
from deployments.config import FluxConfig
from deployments.engines.common import check_device, out_of_memory, resolve_device
from deployments.engines.cuda_graphs import CudaGraphRunner
from deployments.engines.flux_loading import load_flux_pipeline
from deployments.engines.flux_speedups import optimize_pipeline, region_store
from deployments.engines.precompiled import RegionStore
from deployments.engines.preload import EarlyWeights, use_compile_cache_dir
from deployments.engines.previews import LatentPreviewer
from deployments.vram import GIB

logger = logging.getLogger(__name__)

OUT_OF_MEMORY_ADVICE = (
    "Lower the replica's footprint (`precision: nf4`, `t5_nf4: true`, `cpu_offload: true`, `vae_tile_size: 256`, "
    "or fewer replicas per GPU), or offer fewer or smaller images (`limits`)."
)

Embeddings = tuple[torch.Tensor, torch.Tensor]  # one prompt's T5 sequence and pooled CLIP embedding


class PromptCache:
    """Embeddings of recent prompts on the device, least recently used evicted first: repeats skip the encoders."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[str, Embeddings] = OrderedDict()

    def embed(self, prompts: list[str], encode: Callable[[list[str]], dict[str, Embeddings]]) -> Embeddings:
        """Stacked embeddings for `prompts`, calling `encode` once for those not cached."""
        missing = [prompt for prompt in dict.fromkeys(prompts) if prompt not in self.entries]
        encoded = encode(missing) if missing else {}
        rows = [encoded.get(prompt) or self.entries[prompt] for prompt in prompts]
        if self.size:
            for prompt in dict.fromkeys(prompts):
                self.entries[prompt] = encoded.get(prompt) or self.entries[prompt]
                self.entries.move_to_end(prompt)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return torch.stack([row[0] for row in rows]), torch.stack([row[1] for row in rows])

    def clear(self) -> None:
        self.entries.clear()


def to_uint8_pixels(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] floats in [0, 1] -> [N, H, W, 3] uint8 on the CPU, rounded as PIL conversion expects."""
    return (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class FluxEngine:
    """One FluxPipeline on one device; each call is seeded per image, never from global RNG state."""

    def __init__(
        self, pipe: FluxPipeline, config: FluxConfig, device: torch.device, regions: RegionStore | None = None
    ) -> None:
        self.pipe = pipe
        self.config = config
        self.device = device
        self._lock = threading.Lock()  # the pipeline's scheduler keeps per-call state: one call at a time
        self.prompt_cache = PromptCache(config.prompt_cache_size)
        self._previewer: LatentPreviewer | None = None  # fitted on the first call that asks for previews
        self.regions = regions  # with `compile: precompiled`
        self.startup_s: dict[str, float] = {}  # "load" and "warm-up", as `load` logs them (for benchmarks)

    @classmethod
    def load(
        cls,
        config: FluxConfig,
        warmup_sizes: Sequence[tuple[int, int]] | None = None,
        warmup_batch_sizes: Sequence[int] = (1,),
        early_weights: EarlyWeights | None = None,
    ) -> "FluxEngine":
        """Load the model; with `compile` or `cuda_graphs`, also compile and capture every (width, height) of
        `warmup_sizes` (default: 512x512 or the nearest allowed side) at each of `warmup_batch_sizes`, before it
        serves, and from then on run the transformer on at most the largest of them at a time.
        `early_weights`: what `preload.start_reading(config)` began reading before this module was imported."""
        device = resolve_device(config.device)
        # Inductor's part counts from here; the driver's only where CUDA is still unused (FluxGenerator calls it first).
        use_compile_cache_dir(config)
        if config.cublas_workspace_mib:  # read once, at the process's first cuBLAS call
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", f":{config.cublas_workspace_mib * 1024}:1")
        regions = region_store(config)  # with `compile: precompiled`
        side = min(max(512, config.min_side), config.max_side)
        sizes = list(warmup_sizes or [(side, side)])
        # Saved regions load on a thread from when their blocks are installed (fp8: as they load) to the warm-up's end:
        # those the last start of the same config, sizes and batch sizes asked for, wherever its folders were mounted.
        settings = config.model_dump_json(exclude={"cache_dir", "compile_cache_dir"})
        plan = f"{settings} sizes {sizes} batch sizes {list(warmup_batch_sizes)}"
        with regions.prefetching(plan) if regions is not None else contextlib.nullcontext():
            start = time.perf_counter()
            try:
                pipe = load_flux_pipeline(config, device, regions, early_weights)
                optimize_pipeline(pipe, config, regions)
            except torch.cuda.OutOfMemoryError:
                pipe = None  # leave the handler so the failed load's tensors can be freed
            finally:
                if early_weights is not None:  # a failed load stops the reading too
                    early_weights.close()
            if pipe is None:
                raise out_of_memory("model load", device, OUT_OF_MEMORY_ADVICE)
            load_s = time.perf_counter() - start
            vram = (
                f", {torch.cuda.memory_allocated(device) / GIB:.2f} GiB VRAM allocated" if device.type == "cuda" else ""
            )
            logger.info(
                "Loaded Flux (%s, %s%s%s) on %s in %.1f s%s",
                config.random_weights or config.model,
                config.precision,
                ", T5 nf4" if config.t5_nf4 else "",
                ", CPU offload" if config.cpu_offload else "",
                device,
                load_s,
                vram,
            )
            engine = cls(pipe, config, device, regions)
            engine.startup_s["load"] = load_s
            if config.compile != "none" or config.cuda_graphs:
                if warmup_batch_sizes:  # none: the caller warms up itself, at the batches it will run
                    pipe.transformer.forward = TransformerInParts(pipe.transformer.forward, max(warmup_batch_sizes))
                start = time.perf_counter()
                engine.warm_up(sizes, warmup_batch_sizes)
                engine.startup_s["warm-up"] = time.perf_counter() - start
                logger.info(
                    "Warmed up Flux (compile %s, CUDA graphs for up to %d shapes) for sizes %s at batch sizes %s in "
                    "%.1f s",
                    config.compile,
                    config.cuda_graphs,
                    [f"{width}x{height}" for width, height in sizes],
                    list(warmup_batch_sizes),
                    engine.startup_s["warm-up"],
                )
        if regions is not None:
            logger.info(
                "Precompiled regions in %s: %d loaded (%d of them read ahead, %d read ahead and not asked for), %d "
                "compiled and saved; %.1f s of loading (on a thread beside the load and the warm-up) and compiling",
                regions.folder,
                regions.loaded,
                regions.read_ahead,
                regions.read_unused,
                regions.compiled,
                regions.seconds,
            )
        if device.type == "cuda":  # hand back what loading and warm-up cached: other replicas may share the card
            torch.cuda.empty_cache()
        return engine

    def check_health(self) -> None:
        check_device(self.device)

    def warm_up(self, sizes: Sequence[tuple[int, int]], batch_sizes: Sequence[int]) -> None:
        """Compile and capture now, not on a user's request: one single-step generation per (width, height) and
        batch size. The shapes of a call do not depend on its number of steps. A decoder that slices decodes one
        image at a time, so each size's first call covers it and the others stop at the latents."""
        for width, height in sizes:
            for index, batch in enumerate(batch_sizes):
                prompts = [f"warm-up image {i} of {batch}" for i in range(batch)]
                decode = index == 0 or not self.pipe.vae.use_slicing
                self.generate(prompts, seeds=list(range(batch)), width=width, height=height, steps=1, decode=decode)
        self.prompt_cache.clear()
        if self.device.type == "cuda":  # the GPU runs behind the CPU (captures do not wait for it): done means done
            torch.cuda.synchronize(self.device)

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
        preview_steps: Collection[int] = (),
        on_preview: Callable[[int, np.ndarray], None] | None = None,
        decode: bool = True,
    ) -> torch.Tensor:
        """One image per seed, as floats in [0, 1] shaped [len(seeds), 3, height, width].

        `prompt` is one prompt for every image, or one per seed (requests batched together).
        `negative_prompt` runs true classifier-free guidance (two transformer passes per step).
        With `out` ([N, 3, H, W], or [3, H, W] for one seed) the images are written into it and it
        is returned. `on_step(step, steps)` is called after each denoising step (1-based), and after each of
        `preview_steps`, `on_preview(step, previews)` with uint8 [N, height / 8, width / 8, 3] previews of the
        images (`previews.py`); without preview steps nothing is computed for them. With `decode=False` it stops
        before the VAE and returns the denoised latents, packed as the transformer gives them (the warm-up's use).
        Raises `ValueError` naming the parameter for bad input, `OutOfGpuMemoryError` when CUDA runs out.
        """
        # 1. Check the input.
        prompts = [prompt] * max(1, len(seeds)) if isinstance(prompt, str) else list(prompt)
        self._check(prompts, seeds, width, height, steps, guidance)
        for text in dict.fromkeys(prompts):
            self._warn_if_truncated(text)
        expected = (len(seeds), 3, height, width)
        if out is not None and tuple(out.shape) not in (expected, expected[1:] if len(seeds) == 1 else None):
            raise ValueError(f"out: expected shape {list(expected)}, got {list(out.shape)}")
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        images = None
        with self._lock:
            hook = None
            try:
                # 2. Previews, if asked for: the first request that asks fits their colour map.
                previews = self._previews(preview_steps, on_preview, width, height)
                if previews:
                    hook = self.pipe.transformer.register_forward_pre_hook(
                        self._previewer.remember_step_input, with_kwargs=True
                    )
                step_end = _step_callback(on_step, steps, previews)
                progress = {"callback_on_step_end": step_end} if step_end else {}
                # 3. Prompt embeddings, from the cache where the prompt was seen.
                embeds, pooled = self.prompt_cache.embed(prompts, self._encode)
                true_cfg = {}
                if negative_prompt:
                    negative_embeds, negative_pooled = self.prompt_cache.embed(
                        [negative_prompt] * len(seeds), self._encode
                    )
                    true_cfg = {
                        "negative_prompt_embeds": negative_embeds,
                        "negative_pooled_prompt_embeds": negative_pooled,
                        "true_cfg_scale": self.config.true_cfg_scale,
                    }
                # 4. Denoise and decode.
                images = self.pipe(
                    prompt_embeds=embeds,
                    pooled_prompt_embeds=pooled,
                    num_images_per_prompt=1,
                    generator=generators,
                    width=width,
                    height=height,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    max_sequence_length=self.config.max_sequence_length,
                    output_type="pt" if decode else "latent",
                    **true_cfg,
                    **progress,
                ).images
            except torch.cuda.OutOfMemoryError:
                pass  # leave the handler first: its traceback pins the tensors we need to free
            finally:
                if hook:
                    hook.remove()
            if images is None:
                raise out_of_memory("generation", self.device, OUT_OF_MEMORY_ADVICE)
        if out is None:
            return images
        return out.copy_(images.reshape(out.shape))

    def _previews(
        self,
        steps: Collection[int],
        on_preview: Callable[[int, np.ndarray], None] | None,
        width: int,
        height: int,
    ) -> Callable[[int, torch.Tensor], None] | None:
        """What the step callback calls with the latents after each step, or None when no preview is wanted."""
        if not steps or on_preview is None:
            return None
        if self._previewer is None:
            self._previewer = LatentPreviewer(self.pipe)
        previewer = self._previewer

        def after_step(step: int, latents: torch.Tensor) -> None:
            if step in steps:
                on_preview(step, previewer.preview(latents, height, width))

        return after_step

    def _encode(self, prompts: list[str]) -> dict[str, Embeddings]:
        """Both text encoders on `prompts`. Encoders replayed as CUDA graphs take one prompt at a time: one shape,
        so one graph each instead of one per number of new prompts in a batch (6 fewer captures at the fp8 profile's
        start), while one prompt's `max_sequence_length` T5 tokens (256: about 2.4 TFLOP) already bring T5's matmuls
        near compute-bound, so batching prompts saves little. Otherwise one batch (streamed encoders stream their
        weights once per call)."""
        graphed = isinstance(self.pipe.text_encoder_2.forward, CudaGraphRunner)
        encoded = {}
        for batch in [[prompt] for prompt in prompts] if graphed else [prompts]:
            embeds, pooled, _ = self.pipe.encode_prompt(
                batch, prompt_2=None, device=self.device, max_sequence_length=self.config.max_sequence_length
            )
            # Copies, so that a cached row does not keep its whole batch alive.
            encoded.update({prompt: (embeds[i].clone(), pooled[i].clone()) for i, prompt in enumerate(batch)})
        return encoded

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

    def text_tokens(self, prompt: str) -> int:
        """Tokens of `prompt` the T5 encoder reads (it stops at `max_sequence_length`)."""
        return min(len(self.pipe.tokenizer_2(prompt, verbose=False).input_ids), self.config.max_sequence_length)

    def _warn_if_truncated(self, prompt: str) -> None:
        """Say how much of a long prompt each text encoder reads, counted by the real tokenizers."""
        for name, tokenizer, limit in (
            ("CLIP", self.pipe.tokenizer, self.pipe.tokenizer.model_max_length),
            ("T5", self.pipe.tokenizer_2, self.config.max_sequence_length),
        ):
            count = len(tokenizer(prompt, verbose=False).input_ids)
            if count > limit:
                logger.warning("Prompt is %d %s tokens; %s reads only the first %d.", count, name, name, limit)


class TransformerInParts:
    """The transformer's forward, on at most `images` images per call: a larger batch runs in parts of that many
    images (the last one smaller), whose shapes the warm-up compiled and captured, so a request for more images
    than a replica warmed up compiles and captures nothing. Each image is computed as in a batch of its part's
    size. Only the transformer's inputs and output have a batch dimension that it splits: graphed text encoders
    take one prompt at a time, and a compiled or graphed decoder one image (`flux_speedups.optimize_pipeline`).

    Why parts rather than more shapes: on an H200 the fp8 transformer took 0-5% more time per image in passes of 2
    than of 4 (one 1024x1024 image already fills the card), while each batch size costs every replica's start a
    capture per size (docs/performance.md). Called as FluxPipeline calls it: keyword arguments, `return_dict=False`.
    """

    BATCHED = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "guidance")

    def __init__(self, forward: Callable, images: int) -> None:
        self.function = forward
        self.images = images

    def __call__(self, **kwargs: object) -> tuple[torch.Tensor]:
        batch = len(kwargs["hidden_states"])
        if batch <= self.images:
            return self.function(**kwargs)
        parts = []
        for start in range(0, batch, self.images):
            part = {
                name: value[start : start + self.images] if name in self.BATCHED and value is not None else value
                for name, value in kwargs.items()
            }
            parts.append(self.function(**part)[0])
        return (torch.cat(parts),)


def _step_callback(
    on_step: Callable[[int, int], None] | None,
    steps: int,
    previews: Callable[[int, torch.Tensor], None] | None,
):
    """diffusers' callback_on_step_end, reporting 1-based steps (None when nobody listens)."""
    if on_step is None and previews is None:
        return None

    def callback(pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        if previews:
            previews(step_index + 1, callback_kwargs["latents"])
        if on_step:
            on_step(step_index + 1, steps)
        return callback_kwargs

    return callback
