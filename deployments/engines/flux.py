"""FLUX.1-schnell engine: load the diffusers pipeline once, turn prompts and seeds into pixels.

Plain PyTorch and diffusers; no Ray. The deployment in `deployments/generator.py` wraps it.
"""

import gc
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from diffusers.hooks import apply_group_offloading
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.engines.common import TORCH_DTYPES, ModelFilesMissingError, resolve_device
from deployments.engines.cuda_graphs import CudaGraphRunner
from deployments.engines.fp8 import float8_transformer_blocks
from deployments.engines.random_models import full_size_flux_pipeline, tiny_flux_pipeline

logger = logging.getLogger(__name__)

DTYPES = {**TORCH_DTYPES, "nf4": torch.bfloat16, "fp8": torch.bfloat16}  # the dtype they compute in
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
    precision: Literal["bf16", "fp16", "fp32", "nf4", "fp8"] = Field(
        "bf16",
        description="nf4: bitsandbytes 4-bit NF4 transformer with bf16 compute (CUDA only). fp8: the transformer "
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
        description="Prompt embeddings kept on the device (about 2 MB each): repeated prompts and "
        "retries skip the text encoders. 0 turns the cache off.",
    )
    device: str = Field("auto", description="'auto' picks CUDA when present, else CPU.")
    max_sequence_length: int = Field(256, ge=1, le=256, description="T5 tokens; FLUX.1-schnell allows 256.")
    true_cfg_scale: float = Field(
        4.0, gt=1.0, description="Used only with a negative prompt: true CFG, two transformer passes per step."
    )
    compile: Literal["none", "regional"] = Field(
        "none",
        description="regional: torch.compile of the transformer's repeated blocks and of the VAE decoder "
        "(compiled at replica start, before it serves; fused kernels, far fewer launches).",
    )
    fuse_qkv: bool = Field(False, description="Fuse the attention Q/K/V projections into one GEMM each.")
    cuda_graphs: int = Field(
        0,
        ge=0,
        description="Replay the text encoders, each denoising step and the VAE decode as CUDA graphs, captured "
        "for up to this many input shapes (batch size x image size) each; 0 turns them off.",
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
        if self.fuse_qkv and self.precision == "nf4":
            raise ValueError("fuse_qkv: NF4 weights are packed per layer and cannot be concatenated")
        if self.cuda_graphs and self.cpu_offload:
            raise ValueError("cuda_graphs: a graph replays fixed weight addresses; cpu_offload moves the weights")
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
    if config.precision == "fp8" and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        raise ValueError(
            f"precision: fp8 needs compute capability 8.9 or newer; {torch.cuda.get_device_name(device)} "
            "has not. Use bf16, or nf4 for small cards."
        )
    if config.cuda_graphs and device.type != "cuda":
        raise ValueError(f"cuda_graphs: CUDA graphs need a CUDA device; this engine runs on {device}. Set it to 0.")
    if config.random_weights:
        if config.random_weights == "tiny":
            pipe = tiny_flux_pipeline().to(device, dtype)  # built in fp32
        else:
            pipe = full_size_flux_pipeline(device=device, dtype=dtype)
        if config.precision == "fp8":
            _float8(pipe.transformer, config, device)
        return pipe

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
    if config.precision == "fp8":  # quantized layer by layer onto the device: bf16 never fills it
        _float8(pipe.transformer, config, device)
    if config.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    elif config.text_encoder_offload:
        stream_text_encoders(pipe, device)
    else:
        pipe.to(device)
    return pipe


class HostEmbedding(torch.nn.Module):
    """A token embedding looked up in host memory: only the prompt's rows go to the GPU.

    T5's table is 32128 x 4096 (245 MiB in bf16); streamed like T5's other layers, all of it would
    sit on the GPU for a lookup of 256 rows. The table is a plain attribute, not a parameter, so
    group offloading leaves it where it is.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.table = weight.detach().cpu()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(input_ids.cpu(), self.table).to(input_ids.device)


def stream_text_encoders(pipe: FluxPipeline, device: torch.device) -> None:
    """The 12 GB arrangement: transformer and VAE decoder on the GPU, text encoders streamed from pinned memory.

    The text encoders run once per new prompt (the prompt cache skips them for repeats), so their
    weights need not take GPU memory between prompts; streaming T5's 9.5 GB took 0.22 s on an H100 host.
    """
    del pipe.vae.encoder  # text-to-image never encodes an image: 65 MiB the GPU need not hold
    pipe.transformer.to(device)
    pipe.vae.to(device)
    t5 = pipe.text_encoder_2
    t5.set_input_embeddings(HostEmbedding(t5.get_input_embeddings().weight))
    for encoder in (pipe.text_encoder, t5):
        # record_stream: each onloaded layer's memory is reused once the compute stream is done with it, without a sync
        apply_group_offloading(
            encoder, onload_device=device, offload_type="leaf_level", use_stream=True, record_stream=True
        )


def _float8(transformer: FluxTransformer2DModel, config: FluxConfig, device: torch.device) -> None:
    if config.fuse_qkv:  # before: fp8 layers cannot be concatenated
        fuse_qkv_projections(transformer)
    float8_transformer_blocks(transformer, device)


def fuse_qkv_projections(transformer: FluxTransformer2DModel) -> None:
    """One GEMM for Q, K and V (and for the text stream's Q, K, V) in every attention layer.

    diffusers keeps the unfused layers beside the fused ones (4 GiB in bf16); they are dropped here,
    so the transformer cannot be unfused afterwards.
    """
    transformer.fuse_qkv_projections()
    for module in transformer.modules():
        if getattr(module, "fused_projections", False):
            for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
                if getattr(module, name, None) is not None:
                    delattr(module, name)


def optimize_pipeline(pipe: FluxPipeline, config: FluxConfig) -> None:
    """Apply the speed options of `config` to a loaded pipeline, in place, in the order they compose."""
    if config.fuse_qkv and config.precision != "fp8":  # fp8 fused before quantizing, at load
        fuse_qkv_projections(pipe.transformer)
    if config.compile == "regional":
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
        # The decoder is one region, compiled for one shape: images are decoded one at a time (once compiled,
        # as fast as a whole batch on an H100), so a new batch size does not compile it again.
        pipe.vae.enable_slicing()
        pipe.vae.decoder.compile(fullgraph=True, dynamic=False)
    if config.cuda_graphs:
        pipe.transformer.forward = CudaGraphRunner(pipe.transformer.forward, config.cuda_graphs)
        if not config.text_encoder_offload:  # streamed weights cannot be replayed from fixed addresses
            pipe.text_encoder.forward = CudaGraphRunner(pipe.text_encoder.forward, config.cuda_graphs)
            pipe.text_encoder_2.forward = CudaGraphRunner(pipe.text_encoder_2.forward, config.cuda_graphs)
        pipe.vae.decode = CudaGraphRunner(pipe.vae.decode, config.cuda_graphs)


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
        self._prompt_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    @classmethod
    def load(cls, config: FluxConfig, warmup_batch_sizes: Sequence[int] = (1,)) -> "FluxEngine":
        """Load the model; with `compile` or `cuda_graphs`, also compile and capture for these batch
        sizes at 512x512 (or the nearest allowed side) before the engine serves."""
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
        if config.compile != "none" or config.cuda_graphs:
            start = time.perf_counter()
            engine.warm_up(warmup_batch_sizes)
            logger.info(
                "Warmed up Flux (compile %s, CUDA graphs for up to %d shapes) for batch sizes %s in %.1f s",
                config.compile,
                config.cuda_graphs,
                list(warmup_batch_sizes),
                time.perf_counter() - start,
            )
        if device.type == "cuda":  # hand back what loading and warm-up cached: other replicas may share the card
            torch.cuda.empty_cache()
        return engine

    def warm_up(self, batch_sizes: Sequence[int]) -> None:
        """Compile and capture now, not on a user's request: one generation per batch size."""
        side = min(max(512, self.config.min_side), self.config.max_side)
        for size in batch_sizes:
            prompts = [f"warm-up image {i} of {size}" for i in range(size)]
            self.generate(prompts, seeds=list(range(size)), width=side, height=side, steps=4)
        self._prompt_cache.clear()

    def _prompt_embeddings(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 and pooled CLIP embeddings per prompt, encoding only prompts not in the cache (in one batch)."""
        cache = self._prompt_cache
        missing = [prompt for prompt in dict.fromkeys(prompts) if prompt not in cache]
        encoded = {}
        if missing:
            embeds, pooled, _ = self.pipe.encode_prompt(
                missing,
                prompt_2=None,
                device=self.device,
                max_sequence_length=self.config.max_sequence_length,
            )
            # Copies, so that a cached row does not keep its whole batch alive.
            encoded = {prompt: (embeds[i].clone(), pooled[i].clone()) for i, prompt in enumerate(missing)}
        rows = [encoded[prompt] if prompt in encoded else cache[prompt] for prompt in prompts]
        if self.config.prompt_cache_size:
            for prompt in dict.fromkeys(prompts):  # least recently used first, evicted first
                cache[prompt] = encoded.get(prompt) or cache[prompt]
                cache.move_to_end(prompt)
        while len(cache) > self.config.prompt_cache_size:
            cache.popitem(last=False)
        return torch.stack([row[0] for row in rows]), torch.stack([row[1] for row in rows])

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
        progress = {"callback_on_step_end": _step_callback(on_step, steps)} if on_step else {}
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        images = None
        with self._lock:
            try:
                embeds, pooled = self._prompt_embeddings(prompts)
                true_cfg = {}
                if negative_prompt:
                    negative_embeds, negative_pooled = self._prompt_embeddings([negative_prompt] * len(seeds))
                    true_cfg = {
                        "negative_prompt_embeds": negative_embeds,
                        "negative_pooled_prompt_embeds": negative_pooled,
                        "true_cfg_scale": self.config.true_cfg_scale,
                    }
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
                    output_type="pt",
                    **true_cfg,
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
