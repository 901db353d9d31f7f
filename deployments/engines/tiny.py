"""Tiny random-weight models for the CPU profile and the tests.

No machine here can download FLUX.1-schnell or CLIP weights, so the CPU profile builds the real
diffusers/transformers/open_clip classes at toy sizes with seeded random weights. Everything around
them (pipeline, scheduler, tokenizers, serving) is the production code path.
"""

import gzip
from functools import cache
from pathlib import Path

import open_clip
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from open_clip.tokenizer import bytes_to_unicode, default_bpe
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

TINY_CLIP_CONFIGS = Path(__file__).with_name("tiny_clip")
# Laid out as open_clip's SimpleTokenizer: 256 byte symbols, their </w> twins, the merges, 2 specials.
CLIP_NUM_MERGES = 49152 - 256 - 2
CLIP_VOCAB_SIZE = 49408
CLIP_MAX_TOKENS = 77


@cache
def clip_bpe_tokenizer(model_max_length: int = CLIP_MAX_TOKENS) -> CLIPTokenizer:
    """The real CLIP BPE tokenizer (as in FLUX's `tokenizer/`), rebuilt from the vocabulary open_clip ships.

    The vocabulary is laid out exactly as open_clip's `SimpleTokenizer` does, so token ids match.
    `model_max_length` must be set: FluxPipeline pads the CLIP prompt to it.
    """
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1 : CLIP_NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)}, merges=merges, model_max_length=model_max_length
    )


def tiny_flux_pipeline(seed: int = 0, t5_max_length: int = 256) -> FluxPipeline:
    """FLUX.1-schnell's pipeline with every component shrunk, seeded random weights, fp32 on CPU.

    The VAE keeps Flux's 8x downsampling and 2x2 latent packing, so image sizes behave as in
    production. T5's sentencepiece vocabulary cannot be had offline; the tiny T5 reads CLIP BPE ids.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=False,
            axes_dims_rope=(4, 6, 6),
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[8, 8, 16, 16],
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            mid_block_add_attention=False,
            use_quant_conv=False,
            use_post_quant_conv=False,
            scaling_factor=0.3611,
            shift_factor=0.1159,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=CLIP_VOCAB_SIZE,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=CLIP_MAX_TOKENS,
                hidden_act="quick_gelu",
                projection_dim=32,
            )
        )
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=CLIP_VOCAB_SIZE,
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                feed_forward_proj="gated-gelu",
                is_encoder_decoder=False,
            )
        )
    for model in (transformer, vae, text_encoder, text_encoder_2):
        model.eval().requires_grad_(False)  # built in train mode: T5's dropout would make seeds meaningless
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_bpe_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_bpe_tokenizer(t5_max_length),
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def register_tiny_clip_configs() -> None:
    """Make `tiny-clip-a` and `tiny-clip-b` (random-weight open_clip models) known to open_clip by name."""
    open_clip.add_model_config(TINY_CLIP_CONFIGS)
