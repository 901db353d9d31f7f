"""Finding and loading FLUX.1-schnell: a hub id or local folder (safetensors only), or random weights built
in code; NF4 or fp8 quantization; where the weights live (GPU, CPU offload, streamed text encoders); and
whether the VAE decodes in tiles.

`load_flux_pipeline` reads top to bottom in the order it acts. Speed setups that change how the loaded
pipeline runs (QKV fusion, compilation, CUDA graphs) are in `flux_speedups.py`.
"""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
from diffusers.hooks import apply_group_offloading

from deployments.config import FluxConfig
from deployments.engines.common import TORCH_DTYPES, ModelFilesMissingError
from deployments.engines.flux_speedups import fuse_qkv_projections
from deployments.engines.precompiled import RegionStore

COMPUTE_DTYPES = {**TORCH_DTYPES, "nf4": torch.bfloat16, "fp8": torch.bfloat16}  # per `precision`


def load_flux_pipeline(config: FluxConfig, device: torch.device, regions: RegionStore | None = None) -> FluxPipeline:
    """Build or load the pipeline described by `config`, placed on `device` (or offloaded to it). With `regions`
    (`compile: precompiled`), fp8 blocks are installed in the store as they arrive on the device."""
    dtype = COMPUTE_DTYPES[config.precision]
    if config.precision == "fp8" and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        raise ValueError(
            f"precision: fp8 needs compute capability 8.9 or newer; {torch.cuda.get_device_name(device)} "
            "has not. Use bf16, or nf4 for small cards."
        )
    if config.cuda_graphs and device.type != "cuda":
        raise ValueError(f"cuda_graphs: CUDA graphs need a CUDA device; this engine runs on {device}. Set it to 0.")

    # 1. Random weights: the architecture built in code, already on the device.
    if config.random_weights:
        from deployments.engines import random_models

        if config.random_weights == "tiny":
            pipe = random_models.tiny_flux_pipeline().to(device, dtype)  # built in fp32
        else:
            pipe = random_models.full_size_flux_pipeline(device=device, dtype=dtype)
    else:
        # 2. Files: a complete local folder, the Hugging Face cache, or (online) the hub.
        folder = local_model_folder(config)
        source = str(folder or config.model)
        common = {"cache_dir": config.cache_dir, "local_files_only": config.offline, "use_safetensors": True}
        # NF4 components are quantized by bitsandbytes as they load.
        components = nf4_components(config, source, common) if config.precision == "nf4" else {}
        pipe = FluxPipeline.from_pretrained(source, **components, dtype=dtype, **common)
        pipe.set_progress_bar_config(disable=True)

    # 3. Storage precision.
    if config.precision == "fp8":  # quantized block by block onto the device: bf16 never fills it
        quantize_fp8(pipe.transformer, config, device, regions)

    # 4. Placement (random weights are built on the device; the config refuses offloading them), and how much of
    # an image the VAE decoder takes at once.
    if config.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    elif config.text_encoder_offload:
        stream_text_encoders(pipe, device)
    else:
        pipe.to(device)
    if config.vae_tile_size:
        tile_vae_decoder(pipe.vae, config.vae_tile_size)
    return pipe


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


def nf4_components(config: FluxConfig, source: str, common: dict) -> dict[str, torch.nn.Module]:
    """The transformer (and with `t5_nf4`, T5) loaded as bitsandbytes NF4 with bf16 compute."""
    from diffusers import BitsAndBytesConfig
    from transformers import BitsAndBytesConfig as TransformersBitsAndBytesConfig
    from transformers import T5EncoderModel

    nf4 = {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_compute_dtype": torch.bfloat16,
        "bnb_4bit_use_double_quant": config.nf4_double_quant,
    }
    components = {
        "transformer": FluxTransformer2DModel.from_pretrained(
            source,
            subfolder="transformer",
            quantization_config=BitsAndBytesConfig(**nf4),
            dtype=torch.bfloat16,
            **common,
        )
    }
    if config.t5_nf4:
        components["text_encoder_2"] = T5EncoderModel.from_pretrained(
            source,
            subfolder="text_encoder_2",
            quantization_config=TransformersBitsAndBytesConfig(**nf4),
            dtype=torch.bfloat16,
            **common,
        )
    return components


def quantize_fp8(
    transformer: FluxTransformer2DModel, config: FluxConfig, device: torch.device, regions: RegionStore | None
) -> None:
    """The transformer blocks' matmuls in float8 on `device`, one block at a time: a block moves to the device in
    bf16, its QKV is fused there (fp8 layers cannot be; on a CPU, the fused layers' random initialisation, which
    diffusers then overwrites, is seconds of a load), then its linear layers are quantized. A transformer loaded on
    the CPU never sits on the device in bf16. Each block done is installed in `regions`, if given: its saved
    compiled regions load on the store's thread while the next blocks copy."""
    from deployments.engines.fp8 import float8_linears

    for block in (*transformer.transformer_blocks, *transformer.single_transformer_blocks):
        block.to(device)
        if config.fuse_qkv:
            fuse_qkv_projections(block)
        float8_linears(block, device)
        if regions is not None:
            regions.install(block)


def tile_vae_decoder(vae: AutoencoderKL, tile_size: int) -> None:
    """diffusers' tiled decoding, with tiles of `tile_size` pixels (its default is the VAE's sample size: 1024
    pixels for Flux's, which leaves images up to 1024x1024 whole)."""
    vae.enable_tiling()
    vae.tile_sample_min_size = tile_size
    vae.tile_latent_min_size = tile_size // 2 ** (len(vae.config.block_out_channels) - 1)


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
    weights need not take GPU memory between prompts; streaming T5's 8.9 GiB took 0.22 s on an H100 host.
    """
    # Deleted, not moved to the CPU: FluxPipeline sends latents to the device of the VAE's first parameter.
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
