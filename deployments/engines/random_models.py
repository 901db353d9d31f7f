"""Random-weight models: tiny ones for the CPU profile and tests, full-size FLUX.1-schnell for GPU runs.

No machine here can download FLUX.1-schnell or CLIP weights, so models are built in code from the
real diffusers/transformers/open_clip classes with seeded random weights. Everything around them
(pipeline, scheduler, tokenizers, loading from disk, serving) is the production code path. Speed and
memory do not depend on weight values, so the full-size architecture is good for benchmarks.
"""

import gzip
import math
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from open_clip.tokenizer import bytes_to_unicode, default_bpe
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

FLUX_SCHNELL_CONFIGS = Path(__file__).with_name("flux_schnell")  # the published FLUX.1-schnell configs
# Laid out as open_clip's SimpleTokenizer: 256 byte symbols, their </w> twins, the merges, 2 specials.
CLIP_NUM_MERGES = 49152 - 256 - 2
CLIP_MAX_TOKENS = 77
T5_VOCAB_SIZE = 32128  # T5 v1.1's embedding rows
T5_TOKENIZER_SIZE = 32100  # of which its tokenizer uses these: 3 specials, pieces, 100 extra ids
T5_NUM_EXTRA_IDS = 100


@cache
def _clip_vocabulary() -> tuple[list[str], list[tuple[str, str]]]:
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1 : CLIP_NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    return [*vocab, "<|startoftext|>", "<|endoftext|>"], merges


@cache
def clip_bpe_tokenizer(model_max_length: int = CLIP_MAX_TOKENS) -> CLIPTokenizer:
    """The real CLIP BPE tokenizer (FLUX's `tokenizer/`), rebuilt from the vocabulary open_clip ships.

    Token ids match open_clip's. `model_max_length` must be set: FluxPipeline pads the CLIP prompt to it.
    """
    vocab, merges = _clip_vocabulary()
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)}, merges=merges, model_max_length=model_max_length
    )


@cache
def t5_standin_tokenizer(model_max_length: int = 256) -> T5Tokenizer:
    """A T5 tokenizer of T5's size and layout whose pieces come from CLIP's BPE vocabulary.

    T5's sentencepiece model cannot be downloaded. This Unigram vocabulary (pad, eos, unk, 31,997
    pieces, 100 extra ids) splits English into realistic token counts, which is what lengths,
    truncation and timing depend on.
    """
    clip_vocab, _ = _clip_vocabulary()
    pieces = dict.fromkeys(
        "▁" + token.removesuffix("</w>") if token.endswith("</w>") else token for token in clip_vocab[:-2]
    )
    num_pieces = T5_TOKENIZER_SIZE - 3 - T5_NUM_EXTRA_IDS
    scored = [(piece, -math.log(rank + 2)) for rank, piece in enumerate(list(pieces)[:num_pieces])]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *scored]
    return T5Tokenizer(vocab=vocab, extra_ids=T5_NUM_EXTRA_IDS, model_max_length=model_max_length)


def _assemble(transformer, vae, text_encoder, text_encoder_2, scheduler) -> FluxPipeline:
    for model in (transformer, vae, text_encoder, text_encoder_2):
        model.eval().requires_grad_(False)  # built in train mode: T5's dropout would make seeds meaningless
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_bpe_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_standin_tokenizer(),
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextmanager
def _seeded_init(seed: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Create parameters directly on `device` in `dtype`, from `seed`, leaving global RNG state alone."""
    previous_dtype = torch.get_default_dtype()
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(previous_dtype)


def tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """FLUX.1-schnell's pipeline with every component shrunk, fp32 on CPU.

    The VAE keeps Flux's 8x downsampling and 2x2 latent packing, so image sizes behave as in production.
    """
    with _seeded_init(seed):
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
                vocab_size=len(clip_bpe_tokenizer()),
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
                vocab_size=T5_VOCAB_SIZE,
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                feed_forward_proj="gated-gelu",
                is_encoder_decoder=False,
            )
        )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return _assemble(transformer, vae, text_encoder, text_encoder_2, scheduler)


def full_size_flux_pipeline(
    seed: int = 0, device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16
) -> FluxPipeline:
    """The full FLUX.1-schnell architecture from its published configs, initialised on `device` in `dtype`.

    About 17 B parameters (transformer 11.9 B, T5 4.8 B): 32 GiB in bf16. Build it on a GPU.
    """
    with _seeded_init(seed, device, dtype):
        transformer = FluxTransformer2DModel.from_config(
            FluxTransformer2DModel.load_config(FLUX_SCHNELL_CONFIGS / "transformer")
        )
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(FLUX_SCHNELL_CONFIGS / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(FLUX_SCHNELL_CONFIGS / "text_encoder"))
        text_encoder_2 = T5EncoderModel(T5Config.from_pretrained(FLUX_SCHNELL_CONFIGS / "text_encoder_2"))
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        FlowMatchEulerDiscreteScheduler.load_config(FLUX_SCHNELL_CONFIGS / "scheduler")
    )
    return _assemble(transformer, vae, text_encoder, text_encoder_2, scheduler)


def main() -> None:
    """`python -m deployments.engines.random_models PATH [--size full|tiny]`: save a random pipeline to load."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pipe = full_size_flux_pipeline(args.seed) if args.size == "full" else tiny_flux_pipeline(args.seed)
    pipe.save_pretrained(args.path, safe_serialization=True)
    print(f"saved a {args.size} random-weight FLUX.1-schnell pipeline to {args.path}")


if __name__ == "__main__":
    main()
