"""Loading FLUX.1-schnell: a hub id or local folder (safetensors only; found by `model_files.py`), or random weights
built in code; NF4 (its feed-forward layers in pieces, `nf4.py`) or fp8 quantization (an fp8 engine's weights possibly
read ahead, `preload.py`); where the weights live (GPU, CPU offload, streamed text encoders); and whether the VAE
decodes in tiles.

`load_flux_pipeline` reads top to bottom in the order it acts. Speed setups that change how the loaded
pipeline runs (QKV fusion, compilation, CUDA graphs) are in `flux_speedups.py`.
"""

import torch
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
from diffusers.hooks import apply_group_offloading

from deployments.config import FluxConfig
from deployments.engines.common import TORCH_DTYPES
from deployments.engines.flux_speedups import FUSED_LAYERS, fuse_qkv_projections
from deployments.engines.model_files import local_model_folder
from deployments.engines.precompiled import RegionStore
from deployments.engines.preload import EarlyWeights

COMPUTE_DTYPES = {**TORCH_DTYPES, "nf4": torch.bfloat16, "fp8": torch.bfloat16}  # per `precision`


def load_flux_pipeline(
    config: FluxConfig,
    device: torch.device,
    regions: RegionStore | None = None,
    early: EarlyWeights | None = None,
) -> FluxPipeline:
    """Build or load the pipeline described by `config`, placed on `device` (or offloaded to it). With `regions`
    (`compile: precompiled`), fp8 blocks are installed in the store as they arrive on the device; with `early`
    (`preload.start_reading`), the fp8 blocks and T5 take the tensors read there during the imports."""
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
        quantize_fp8(pipe.transformer, config, device, regions, early.tensors("transformer") if early else None)
    if config.precision == "nf4":  # feed-forward layers in pieces: a smaller peak of activations
        from deployments.engines.nf4 import feed_forward_in_pieces

        feed_forward_in_pieces(pipe.transformer)

    # 4. Placement (random weights are built on the device; the config refuses offloading them), and how much of
    # an image the VAE decoder takes at once.
    if config.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    elif config.text_encoder_offload:
        stream_text_encoders(pipe, device)
    else:
        if early is not None and "text_encoder_2" in early.components:
            assign_text_encoder_weights(pipe.text_encoder_2, early.tensors("text_encoder_2"))
        pipe.to(device)
    if config.vae_tile_size:
        tile_vae_decoder(pipe.vae, config.vae_tile_size)
    return pipe


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
    transformer: FluxTransformer2DModel,
    config: FluxConfig,
    device: torch.device,
    regions: RegionStore | None,
    block_tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """The transformer blocks' matmuls in float8 on `device`, one block at a time: a block moves to the device in
    bf16, its QKV is fused there (fp8 layers cannot be; on a CPU, the fused layers' random initialisation, which
    diffusers then overwrites, is seconds of a load), then its linear layers are quantized. A transformer loaded on
    the CPU never sits on the device in bf16. With `block_tensors` (`EarlyWeights`, read while diffusers imported)
    each block is built on the meta device instead and takes its weights from them. Each block done is installed in
    `regions`, if given: its saved compiled regions load on the store's thread while the next blocks are made."""
    from deployments.engines.fp8 import float8_linears

    for prefix, blocks in (
        ("transformer_blocks", transformer.transformer_blocks),
        ("single_transformer_blocks", transformer.single_transformer_blocks),
    ):
        for index, block in enumerate(blocks):
            target = device if block_tensors is None else torch.device("meta")  # meta: structure only, nothing copied
            block.to(target)
            if config.fuse_qkv:
                fuse_qkv_projections(block)
            float8_linears(block, target)
            if block_tensors is not None:
                assign_block_weights(block, f"{prefix}.{index}.", block_tensors)
            if regions is not None:
                regions.install(block)
    if block_tensors:
        unused = sorted(block_tensors)[:5]
        raise ValueError(f"{config.model}: the checkpoint has block weights the transformer lacks: {unused}")


def assign_block_weights(block: torch.nn.Module, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
    """Give a block built on the meta device its tensors, taken out of `tensors` (names prefixed by `prefix`). A fused
    layer takes its parts' tensors concatenated: fp8 rows are scaled one by one, so that is what quantizing the fused
    bf16 layer gives. Each tensor must have the shape and dtype the block expects."""
    state = {}
    for name, expected in block.state_dict().items():
        if prefix + name in tensors:
            tensor = tensors.pop(prefix + name)
        else:
            layer, _, kind = name.rpartition(".")
            parent, _, fused = layer.rpartition(".")
            parts = [f"{prefix}{parent}.{part}.{kind}" for part in FUSED_LAYERS.get(fused, ())]
            if not parts or any(part not in tensors for part in parts):
                raise ValueError(f"the checkpoint has no {prefix}{name}")
            along = 1 if kind == "weight_scale" else 0  # scales are [1, out]
            tensor = torch.cat([tensors.pop(part) for part in parts], dim=along)
        check_read_tensor(prefix + name, tensor, expected)
        state[name] = tensor
    block.load_state_dict(state, strict=True, assign=True)


def check_read_tensor(name: str, tensor: torch.Tensor, expected: torch.Tensor) -> None:
    """A tensor read ahead must have the shape and dtype of the one the module has (or expects, on the meta device)."""
    if (tensor.shape, tensor.dtype) != (expected.shape, expected.dtype):
        raise ValueError(
            f"{name}: read {list(tensor.shape)} {tensor.dtype}, the model has {list(expected.shape)} {expected.dtype}"
        )


def assign_text_encoder_weights(t5: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Give T5 the tensors read ahead for it, each with the shape and dtype from_pretrained gave it (transformers may
    keep layers in another dtype). Its token embedding is saved once, as `shared`, and tied again here."""
    for name, loaded in t5.state_dict().items():
        if name in tensors:
            check_read_tensor(f"text_encoder_2.{name}", tensors[name], loaded)
    missing, unexpected = t5.load_state_dict(tensors, strict=False, assign=True)
    if unexpected or set(missing) != set(t5._tied_weights_keys or ()):
        raise ValueError(f"text_encoder_2: the checkpoint does not fit T5: missing {missing}, unexpected {unexpected}")
    t5.tie_weights()


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


class LinearInPieces(torch.nn.Module):
    """A linear layer split along its output features into layers of their own, whose outputs are concatenated.

    Streamed, a layer is onloaded while the one before it runs, so two layers sit on the GPU at once; for T5's
    feed-forward that was `wi_0` and `wi_1`, 80 MiB each in bf16: T5 took 187 MiB above what was allocated
    before it (NVIDIA H200). In halves, 113 MiB, and the same output; quarters took 104 MiB, for twice the
    layers to stream (docs/performance.md). The same bytes stream either way.
    """

    def __init__(self, linear: torch.nn.Linear, pieces: int) -> None:
        super().__init__()
        biases = linear.bias.chunk(pieces) if linear.bias is not None else [None] * pieces
        self.pieces = torch.nn.ModuleList()
        for weight, bias in zip(linear.weight.chunk(pieces), biases, strict=True):
            piece = torch.nn.Linear(linear.in_features, len(weight), bias=bias is not None, device="meta")
            piece.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)  # its own storage
            if bias is not None:
                piece.bias = torch.nn.Parameter(bias.detach().clone(), requires_grad=False)
            self.pieces.append(piece)

    @property
    def weight(self) -> torch.Tensor:
        """The first piece's: T5 reads `wo.weight.dtype` to cast its input to it."""
        return self.pieces[0].weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.cat([piece(hidden_states) for piece in self.pieces], dim=-1)


def split_feed_forward_in_halves(t5: torch.nn.Module) -> None:
    """Each of T5's linear layers larger than an attention projection (its feed-forward layers) as two halves."""
    square = t5.config.d_model**2
    for parent in list(t5.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and child.weight.numel() > square:
                setattr(parent, name, LinearInPieces(child, 2))


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
    split_feed_forward_in_halves(t5)
    for encoder in (pipe.text_encoder, t5):
        # record_stream: each onloaded layer's memory is reused once the compute stream is done with it, without a sync
        apply_group_offloading(
            encoder, onload_device=device, offload_type="leaf_level", use_stream=True, record_stream=True
        )
