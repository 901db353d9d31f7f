"""The Flux engine and the tokenizers on their own (plain PyTorch, no Ray), with tiny random-weight models."""

import copy
import importlib.util
import logging
import os
import shutil
import sys
import weakref
from pathlib import Path

import bitsandbytes as bnb
import numpy as np
import open_clip
import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel

from conftest import assert_same_weights
from deployments.config import FluxConfig
from deployments.engines import precompiled
from deployments.engines.common import ModelFilesMissingError
from deployments.engines.flux import FluxEngine, TransformerInParts, to_uint8_pixels
from deployments.engines.flux_loading import (
    HostEmbedding,
    LinearInPieces,
    assign_block_weights,
    split_feed_forward_in_halves,
)
from deployments.engines.flux_speedups import fuse_qkv_projections
from deployments.engines.fp8 import float8_linears
from deployments.engines.nf4 import feed_forward_in_pieces
from deployments.engines.precompiled import RegionStore
from deployments.engines.preload import start_reading, use_compile_cache_dir
from deployments.engines.random_models import clip_bpe_tokenizer, t5_standin_tokenizer, tiny_flux_pipeline

TINY = {"random_weights": "tiny", "precision": "fp32", "device": "cpu", "min_side": 64}


@pytest.fixture(scope="module")
def flux() -> FluxEngine:
    return FluxEngine.load(FluxConfig(**TINY))


@pytest.fixture(scope="module")
def saved_tiny_pipeline(tmp_path_factory):
    """A tiny random pipeline saved as a diffusers folder, as `save_pretrained` lays out a hub snapshot."""
    path = tmp_path_factory.mktemp("tiny-flux")
    tiny_flux_pipeline().save_pretrained(path, safe_serialization=True)
    return path


@pytest.mark.parametrize(
    "prompt",
    ["A photo of an astronaut riding a horse on Mars, 4k!", "naïve café — 東京 <b>bold</b>\tand CAPS", ""],
)
def test_clip_tokenizer_matches_open_clip_token_ids(prompt):
    ours = clip_bpe_tokenizer()(prompt).input_ids
    reference = open_clip.get_tokenizer("ViT-L-14")([prompt])[0].tolist()
    assert ours == reference[: len(ours)]
    assert clip_bpe_tokenizer().model_max_length == 77


def test_t5_standin_tokenizer_has_t5s_layout():
    tokenizer = t5_standin_tokenizer()
    assert len(tokenizer) == 32100
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("a red fox in the snow").input_ids
    assert ids[-1] == 1 and tokenizer.unk_token_id not in ids and len(ids) == 7


def test_flux_images_are_deterministic_per_seed_and_in_unit_range(flux):
    first = flux.generate("a red fox", seeds=[1, 2], width=256, height=128)
    assert first.shape == (2, 3, 128, 256) and first.dtype == torch.float32
    assert 0.0 <= first.min() and first.max() <= 1.0
    assert torch.equal(first, flux.generate("a red fox", seeds=[1, 2], width=256, height=128))
    assert not torch.equal(first[0], first[1])
    pixels = to_uint8_pixels(first)
    assert pixels.shape == (2, 128, 256, 3) and pixels.dtype == np.uint8


def test_flux_writes_into_a_callers_tensor(flux):
    out = torch.full((3, 64, 128), -1.0)
    result = flux.generate("a red fox", seeds=[9], width=128, height=64, out=out)
    assert result is out
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert torch.equal(out, flux.generate("a red fox", seeds=[9], width=128, height=64)[0])
    with pytest.raises(ValueError, match=r"^out:"):
        flux.generate("a red fox", seeds=[9], width=128, height=64, out=torch.empty(3, 64, 64))


def test_negative_prompt_and_steps_change_the_image(flux):
    base = flux.generate("a city", seeds=[3], width=64, height=64)
    assert not torch.equal(base, flux.generate("a city", seeds=[3], width=64, height=64, negative_prompt="fog"))
    assert not torch.equal(base, flux.generate("a city", seeds=[3], width=64, height=64, steps=2))


def test_long_prompts_warn_with_real_token_counts(flux, caplog):
    prompt = "a very detailed painting of a lighthouse on a cliff at dusk " * 8  # 13 CLIP tokens per repeat
    with caplog.at_level(logging.WARNING, logger="deployments.engines.flux"):
        flux.generate(prompt, seeds=[0], width=64, height=64)
    expected = len(clip_bpe_tokenizer()(prompt).input_ids)
    assert expected > 77
    assert f"Prompt is {expected} CLIP tokens; CLIP reads only the first 77." in caplog.text
    assert "T5 tokens" not in caplog.text  # T5 reads up to 256
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="deployments.engines.flux"):
        flux.generate(prompt * 3, seeds=[0], width=64, height=64)
    assert "T5 reads only the first 256." in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": "  "}, "prompt"),
        ({"seeds": []}, "seeds"),
        ({"seeds": [-1]}, "seeds"),
        ({"width": 100}, "width"),
        ({"height": 0}, "height"),
        ({"height": 4096}, "height"),
        ({"steps": 0}, "steps"),
        ({"guidance": -1.0}, "guidance"),
    ],
)
def test_flux_rejects_invalid_parameters_naming_the_field(flux, kwargs, field):
    call = {"prompt": "a cat", "seeds": [0], "width": 64, "height": 64, **kwargs}
    with pytest.raises(ValueError, match=f"^{field}:"):
        flux.generate(call.pop("prompt"), **call)


def test_loads_a_local_folder_offline_through_from_pretrained(saved_tiny_pipeline, flux):
    config = FluxConfig(model=str(saved_tiny_pipeline), offline=True, precision="fp32", device="cpu", min_side=64)
    loaded = FluxEngine.load(config)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        built, read = getattr(flux.pipe, name).state_dict(), getattr(loaded.pipe, name).state_dict()
        assert built.keys() == read.keys() and all(torch.equal(built[k], read[k]) for k in built), name
    image = loaded.generate("a red fox", seeds=[4], width=64, height=64)
    assert torch.equal(image, loaded.generate("a red fox", seeds=[4], width=64, height=64))
    # Same weights; CPU GEMMs may round differently for differently aligned tensors, not more.
    torch.testing.assert_close(image, flux.generate("a red fox", seeds=[4], width=64, height=64), atol=1e-3, rtol=0)


def test_incomplete_folder_names_the_missing_files(saved_tiny_pipeline, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved_tiny_pipeline, broken)
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(broken / "tokenizer_2")
    with pytest.raises(ModelFilesMissingError, match="not a complete FLUX pipeline") as error:
        FluxEngine.load(FluxConfig(model=str(broken), precision="fp32", device="cpu"))
    assert "missing: tokenizer_2/tokenizer_config.json, transformer/*.safetensors" in str(error.value)


def test_pickle_weights_are_refused(saved_tiny_pipeline, tmp_path):
    """Safetensors only: a folder whose VAE comes as a pickle (.bin) is not loaded."""
    pickled = tmp_path / "pickled"
    shutil.copytree(saved_tiny_pipeline, pickled)
    weights = pickled / "vae" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ModelFilesMissingError, match=r"vae/\*\.safetensors"):
        FluxEngine.load(FluxConfig(model=str(pickled), precision="fp32", device="cpu"))


def test_offline_hub_id_not_in_cache_fails_with_a_clear_message(tmp_path):
    with pytest.raises(ModelFilesMissingError, match=r"offline mode: 'black-forest-labs/FLUX\.1-schnell'"):
        FluxEngine.load(FluxConfig(cache_dir=str(tmp_path), offline=True, device="cpu"))


def test_random_weights_cannot_take_the_loading_only_options():
    with pytest.raises(ValueError, match="random_weights builds the model in memory"):
        FluxConfig(random_weights="full", precision="nf4")


def test_more_images_than_the_warmed_up_batch_run_in_parts_with_one_set_of_events(flux):
    """An engine that warmed up batches of up to 2 images (as a replica with max_batch_size 2 does) generates a
    request for 3 in transformer passes of 2 and 1: the shapes it captured. Each image is what the part's batch
    draws, and the caller hears each step once and gets previews of all 3 images."""
    engine = FluxEngine.load(FluxConfig(**TINY))
    whole = engine.pipe.transformer.forward
    passes = []

    def counted(**kwargs):
        passes.append(len(kwargs["hidden_states"]))
        return whole(**kwargs)

    engine.pipe.transformer.forward = TransformerInParts(counted, 2)
    steps, previews = [], []
    prompts = ["a red fox", "a blue jay", "a grey owl"]
    images = engine.generate(
        prompts,
        seeds=[1, 2, 3],
        width=64,
        height=64,
        on_step=lambda step, total: steps.append(step),
        preview_steps={2},
        on_preview=lambda step, pixels: previews.append(pixels.shape[0]),
    )
    assert passes == [2, 1] * 4 and steps == [1, 2, 3, 4] and previews == [3]
    separately = torch.cat(
        [
            flux.generate(prompts[:2], seeds=[1, 2], width=64, height=64),
            flux.generate(prompts[2:], seeds=[3], width=64, height=64),
        ]
    )
    torch.testing.assert_close(images, separately, atol=1e-5, rtol=0)


def test_an_engine_whose_caller_warms_it_up_runs_its_batches_whole():
    """`benchmarks.flux_speed` loads a compiled engine without warm-up batch sizes and warms up the batches it then
    times (up to 8 images): the transformer is not split for it."""
    engine = FluxEngine.load(FluxConfig(**TINY, compile="regional"), warmup_batch_sizes=())
    assert not isinstance(engine.pipe.transformer.forward, TransformerInParts)


def test_fused_qkv_projections_draw_the_same_image(flux):
    fused = FluxEngine.load(FluxConfig(**TINY, fuse_qkv=True))
    reference = flux.generate("a red fox", seeds=[5], width=64, height=64)
    torch.testing.assert_close(
        fused.generate("a red fox", seeds=[5], width=64, height=64), reference, atol=1e-3, rtol=0
    )
    assert not hasattr(fused.pipe.transformer.transformer_blocks[0].attn, "to_q")  # the unfused copy is freed


def test_fp8_engine_keeps_block_matmuls_in_float8_and_draws_nearly_the_same_image():
    bf16 = FluxEngine.load(FluxConfig(**{**TINY, "precision": "bf16"}))
    fp8 = FluxEngine.load(FluxConfig(**{**TINY, "precision": "fp8"}, fuse_qkv=True))
    dtypes = {m.weight.dtype for m in fp8.pipe.transformer.transformer_blocks.modules() if hasattr(m, "weight_scale")}
    assert dtypes == {torch.float8_e4m3fn}
    reference = bf16.generate("a red fox", seeds=[5], width=64, height=64)
    image = fp8.generate("a red fox", seeds=[5], width=64, height=64)
    assert (image - reference).abs().mean() < 0.01 < (reference - reference.mean()).abs().mean()


def test_fp8_weights_read_while_diffusers_imports_give_the_same_engine(tmp_path):
    """An fp8 replica whose checkpoint is on local disk starts reading its transformer blocks (quantizing them) and T5
    before it imports diffusers (`preload.start_reading`), then gives the pipeline those tensors: the same weights to
    the bit (fused QKV included, T5's embedding still tied), laid out alike (either finds the regions the other
    compiled), and the same image as the load that copies its own."""
    folder = tmp_path / "checkpoint"
    tiny_flux_pipeline(seed=3).save_pretrained(folder, safe_serialization=True)
    config = FluxConfig(model=str(folder), offline=True, precision="fp8", fuse_qkv=True, device="cpu", min_side=64)
    switch_interval = sys.getswitchinterval()
    early_weights = start_reading(config)
    assert early_weights is not None and early_weights.components == ("transformer", "text_encoder_2")
    read_ahead = FluxEngine.load(config, early_weights=early_weights)
    assert sys.getswitchinterval() == switch_interval  # the process's own again, once loaded
    for component in early_weights.components:  # each handed over to the pipeline
        with pytest.raises(KeyError):
            early_weights.tensors(component)
    copied = FluxEngine.load(config)
    t5 = read_ahead.pipe.text_encoder_2
    assert t5.encoder.embed_tokens.weight is t5.shared.weight
    assert_same_weights(read_ahead, copied)
    fused = read_ahead.pipe.transformer.transformer_blocks[0].attn.to_qkv
    assert fused.weight.dtype == torch.float8_e4m3fn
    images = [engine.generate("a red fox", seeds=[5], width=64, height=64) for engine in (read_ahead, copied)]
    torch.testing.assert_close(images[0], images[1], atol=0, rtol=0)


def test_a_block_tensor_missing_from_the_checkpoint_is_named():
    """Weights read ahead that lack one of a block's tensors (a truncated or foreign checkpoint) fail the load naming
    it, not with a KeyError from inside the assembly."""
    block = tiny_flux_pipeline().transformer.transformer_blocks[0].to("meta")
    fuse_qkv_projections(block)
    float8_linears(block, torch.device("meta"))
    tensors = {
        f"transformer_blocks.0.{name}": torch.empty_like(t, device="cpu") for name, t in block.state_dict().items()
    }
    del tensors["transformer_blocks.0.attn.to_qkv.weight"]
    with pytest.raises(ValueError, match=r"the checkpoint has no transformer_blocks\.0\.attn\.to_qkv\.weight"):
        assign_block_weights(block, "transformer_blocks.0.", tensors)


def single_block_inputs(batch: int, generator: torch.Generator) -> dict:
    """Random inputs of the tiny model's single transformer block: 16 image and 8 text tokens, `batch` images."""
    return {
        "hidden_states": torch.randn(batch, 16, 32, generator=generator),
        "encoder_hidden_states": torch.randn(batch, 8, 32, generator=generator),
        "temb": torch.randn(batch, 32, generator=generator),
        "image_rotary_emb": (torch.randn(24, 16, generator=generator), torch.randn(24, 16, generator=generator)),
    }


def test_precompiled_regions_compile_once_and_a_restarted_replica_loads_them(tmp_path):
    """`compile: precompiled` saves each compiled region whole: one file serves every block of a class (weights are
    its inputs), also when a block gets slices of a tensor as FLUX's later single blocks do; a block whose weights
    are laid out otherwise gets its own; a new store on the same folder, as a restarted replica has, loads them
    (prefetched on a background thread from when each block is installed, as an engine installs its fp8 blocks while
    it loads) instead of compiling."""
    block = tiny_flux_pipeline().transformer.single_transformer_blocks[0].eval()
    other = copy.deepcopy(block)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(1.5)
    transposed = copy.deepcopy(block)  # the same values, one weight stored column-major
    weight = transposed.proj_out.weight
    transposed.proj_out.weight = torch.nn.Parameter(weight.detach().t().contiguous().t(), weight.requires_grad)
    restarted_blocks = copy.deepcopy([block, other, transposed])
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():  # as the engine makes its tensors (inference tensors are another signature)
        inputs = single_block_inputs(1, generator)
        joined = torch.cat([inputs["encoder_hidden_states"], inputs["hidden_states"]], dim=1)
        sliced = {**inputs, "encoder_hidden_states": joined[:, :8], "hidden_states": joined[:, 8:]}  # other strides
        expected = [block(**inputs), other(**sliced), block(**inputs)]

    for blocks, compiled, loaded in (([block, other, transposed], 2, 0), (restarted_blocks, 0, 2)):
        store = RegionStore(tmp_path)
        with store.prefetching("one plan"):  # as an engine loads and warms up: saved regions load on a thread
            for b in blocks:
                store.install(b)
            installed = blocks[0].forward
            store.install(blocks[0])  # met again by the speed setup: left as it is
            assert blocks[0].forward is installed
            with torch.inference_mode():
                outputs = [blocks[0](**inputs), blocks[1](**sliced), blocks[2](**inputs)]
        assert (store.compiled, store.loaded, store.read_ahead) == (compiled, loaded, loaded)
        torch.testing.assert_close(outputs, expected, atol=1e-5, rtol=1e-5)
    assert len(list(tmp_path.iterdir())) == 2


def test_a_replica_reads_ahead_only_the_regions_its_warm_up_asked_for_last_time(tmp_path):
    """A folder keeps the regions of every size and batch a deployment ever served. A replica whose warm-up changed
    (here: one of two shapes left) loads what it asks for on its first start, and from its second start on reads
    ahead exactly those, not the other plan's, which that plan still reads ahead."""
    block = tiny_flux_pipeline().transformer.single_transformer_blocks[0].eval()
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        shapes = [single_block_inputs(batch, generator) for batch in (1, 2)]

    def start(plan: str, inputs: list[dict]) -> tuple[int, int, int, int]:
        store = RegionStore(tmp_path)
        with store.prefetching(plan):
            store.install(block)
            with torch.inference_mode():
                for kwargs in inputs:
                    block(**kwargs)
        del block.forward  # uninstalled, as a new process finds it
        return store.compiled, store.loaded, store.read_ahead, store.read_unused

    assert start("batches 1-2", shapes) == (2, 0, 0, 0)
    assert start("batch 1", shapes[:1]) == (0, 1, 0, 0)  # no record of this plan yet: loaded when asked for
    assert start("batch 1", shapes[:1]) == (0, 1, 1, 0)  # its own file read ahead, the batch-2 one left
    assert start("batches 1-2", shapes) == (0, 2, 2, 0)


def edited_region_store(tmp_path: Path, old: str, new: str) -> type[RegionStore]:
    """`RegionStore` of a copy of `precompiled.py` with `old` replaced by `new`, as an upgraded service runs it."""
    source = Path(precompiled.__file__).read_text()
    assert old in source
    path = tmp_path / f"precompiled_{len(list(tmp_path.glob('precompiled_*.py')))}.py"
    path.write_text(source.replace(old, new))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RegionStore


def test_an_upgrade_that_changes_only_the_stores_bookkeeping_keeps_the_compiled_regions(tmp_path):
    """Regions live in folders named after the code they were compiled from. An upgrade that changes only how the
    store finds, reads ahead or records its files loads the regions the last version compiled; one that changes how a
    region is compiled compiles it again, into a new folder."""
    block = tiny_flux_pipeline().transformer.single_transformer_blocks[0].eval()
    with torch.inference_mode():
        inputs = single_block_inputs(1, torch.Generator().manual_seed(0))
    regions = tmp_path / "regions"
    bookkeeping = ('return folder / f"warm-up-{self._plan}.txt"', 'return folder / f"warm-up-{self._plan}.list"')
    compile_options = ('"dynamic_scale_rblock": False', '"dynamic_scale_rblock": True')

    def start(store_class: type[RegionStore]) -> tuple[int, int]:
        store = store_class(regions)
        with store.prefetching("one plan"):
            store.install(block)
            with torch.inference_mode():
                block(**inputs)
        del block.forward  # uninstalled, as a new process finds it
        return store.compiled, store.loaded

    assert start(RegionStore) == (1, 0)
    assert start(edited_region_store(tmp_path, *bookkeeping)) == (0, 1)
    assert start(edited_region_store(tmp_path, *compile_options)) == (1, 0)
    assert len(list(regions.iterdir())) == 2


def test_vae_tiles_bound_the_decoders_input_and_still_give_the_whole_image():
    """vae_tile_size keeps the decoder's activations to a tile's: 128x128 in 64-pixel tiles is 9 overlapping tiles."""
    tiled = FluxEngine.load(FluxConfig(**TINY, vae_tile_size=64))
    tiles = []
    hook = tiled.pipe.vae.decoder.register_forward_hook(lambda module, args, output: tiles.append(args[0].shape[-2:]))
    try:
        image = tiled.generate("a red fox", seeds=[5], width=128, height=128)
    finally:
        hook.remove()
    assert len(tiles) == 9 and max(tiles) == (8, 8)  # latents are 16x16; a 64-pixel tile is 8x8 of them
    assert image.shape == (1, 3, 128, 128) and 0 <= image.min() < image.max() <= 1


def test_cublas_workspace_is_set_before_the_first_matmul_unless_the_operator_set_it(monkeypatch):
    """cublas_workspace_mib reaches torch through CUBLAS_WORKSPACE_CONFIG; an operator's own setting wins."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "restored after the test")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    FluxEngine.load(FluxConfig(**TINY, cublas_workspace_mib=4))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:1"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    FluxEngine.load(FluxConfig(**TINY, cublas_workspace_mib=4))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_compile_cache_dir_keeps_inductors_and_the_cuda_drivers_compiled_kernels(monkeypatch, tmp_path):
    """compile_cache_dir reaches Inductor (TORCHINDUCTOR_CACHE_DIR) and the CUDA driver's cache of kernels compiled
    from PTX (CUDA_CACHE_PATH, its cuda-jit folder), so that both travel with the folder; an operator's own
    CUDA_CACHE_PATH wins."""
    for name in ("TORCHINDUCTOR_CACHE_DIR", "CUDA_CACHE_PATH"):
        monkeypatch.setenv(name, "restored after the test")
        monkeypatch.delenv(name)
    config = FluxConfig(**TINY, compile_cache_dir=str(tmp_path))
    use_compile_cache_dir(config)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path)
    assert os.environ["CUDA_CACHE_PATH"] == str(tmp_path / "cuda-jit")
    monkeypatch.setenv("CUDA_CACHE_PATH", "/var/cache/cuda")
    use_compile_cache_dir(config)
    assert os.environ["CUDA_CACHE_PATH"] == "/var/cache/cuda"


def t5_embeddings(pipe: FluxPipeline) -> torch.Tensor:
    """One prompt's T5 embeddings, as the engine asks the pipeline for them."""
    return pipe.encode_prompt("a red fox", prompt_2=None, device=torch.device("cpu"), max_sequence_length=32)[0]


def test_t5_looking_its_tokens_up_in_host_memory_encodes_prompts_the_same():
    """The 12 GB mode keeps T5's token table off the GPU; the prompt embeddings must not change."""
    pipe = tiny_flux_pipeline()
    before = t5_embeddings(pipe)
    t5 = pipe.text_encoder_2
    t5.set_input_embeddings(HostEmbedding(t5.get_input_embeddings().weight))
    after = t5_embeddings(pipe)
    assert torch.equal(before, after)
    assert not any("embed" in name or "shared" in name for name, _ in t5.named_parameters())  # nothing to stream


def test_t5_streamed_with_its_feed_forward_layers_in_halves_encodes_prompts_the_same():
    """The 12 GB mode streams T5's feed-forward layers in halves, so that the two layers a stream holds at once
    take less of the GPU; the prompt embeddings must not change."""
    pipe = tiny_flux_pipeline()
    before = t5_embeddings(pipe)
    t5 = pipe.text_encoder_2
    split_feed_forward_in_halves(t5)
    after = t5_embeddings(pipe)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    layers = [module for module in t5.modules() if isinstance(module, torch.nn.Linear)]
    assert max(layer.weight.numel() for layer in layers) == t5.config.d_model * t5.config.d_ff // 2
    in_halves = [module for module in t5.modules() if isinstance(module, LinearInPieces)]
    assert len(in_halves) == 3 * t5.config.num_layers and {len(module.pieces) for module in in_halves} == {2}


def nf4_blocks(transformer: torch.nn.Module, double_quant: bool) -> None:
    """The blocks' linear layers as bitsandbytes NF4 layers with bf16 compute, quantized on the CPU (diffusers'
    from_pretrained quantizes only on a GPU)."""
    for block in [*transformer.transformer_blocks, *transformer.single_transformer_blocks]:
        for parent in list(block.modules()):
            for name, layer in list(parent.named_children()):
                if isinstance(layer, torch.nn.Linear):
                    nf4 = bnb.nn.Linear4bit(
                        layer.in_features,
                        layer.out_features,
                        compute_dtype=torch.bfloat16,
                        compress_statistics=double_quant,
                        quant_type="nf4",
                        device="meta",
                    )
                    nf4.weight = bnb.nn.Params4bit(  # pointing back to its layer, as bitsandbytes' own weights do
                        layer.weight.data,
                        requires_grad=False,
                        compress_statistics=double_quant,
                        quant_type="nf4",
                        module=nf4,
                    ).to("cpu")
                    nf4.bias = layer.bias
                    setattr(parent, name, nf4)


@pytest.mark.parametrize("double_quant", [False, True], ids=["nf4", "nf4-double-quant"])
def test_nf4_transformer_with_its_feed_forward_in_pieces_computes_what_it_computed_whole(double_quant):
    """The NF4 engine splits the blocks' feed-forward layers along their hidden features, so that at 1024x1024 its
    activations take less of a 12 GB card; the transformer's output must not change beyond bf16 rounding, and its
    blocks must still be compiled. Widths are multiples of NF4's 64-value blocks, as FLUX's are."""
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=32,
        num_attention_heads=2,
        joint_attention_dim=64,
        pooled_projection_dim=64,
        guidance_embeds=False,
        axes_dims_rope=(8, 12, 12),
    ).to(torch.bfloat16)
    transformer.requires_grad_(False)
    nf4_blocks(transformer, double_quant)
    inputs = {
        "hidden_states": torch.randn(1, 64, 16, dtype=torch.bfloat16),
        "encoder_hidden_states": torch.randn(1, 8, 64, dtype=torch.bfloat16),
        "pooled_projections": torch.randn(1, 64, dtype=torch.bfloat16),
        "timestep": torch.tensor([1.0], dtype=torch.bfloat16),
        "img_ids": torch.zeros(64, 3),
        "txt_ids": torch.zeros(8, 3),
        "return_dict": False,
    }
    whole = transformer(**inputs)[0]
    replaced = weakref.ref(transformer.single_transformer_blocks[0].proj_out)
    feed_forward_in_pieces(transformer, pieces=2)
    assert replaced() is None  # freed at once, not at the next garbage collection: the load holds one or the other
    in_pieces = transformer(**inputs)[0]
    torch.testing.assert_close(in_pieces, whole, rtol=0, atol=1 / 64)  # outputs near 2.6: bf16 steps of 1/64
    double, single = transformer.transformer_blocks[0], transformer.single_transformer_blocks[0]
    for feed_forward in (double.ff, single.mlp):  # 256 hidden features, in halves
        assert [layer.out_features for layer in feed_forward.up] == [layer.in_features for layer in feed_forward.down]
        assert [layer.out_features for layer in feed_forward.up] == [128, 128]
    assert not hasattr(single, "proj_out")  # its attention and MLP are projected apart, not concatenated
    transformer.compile_repeated_blocks(fullgraph=True)
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    assert all(block._compiled_call_impl is not None for block in blocks)


def test_repeated_prompts_skip_the_text_encoders_and_draw_the_same_image(flux):
    t5_calls = []
    hook = flux.pipe.text_encoder_2.register_forward_hook(lambda *_: t5_calls.append(1))
    try:
        first = flux.generate("a lighthouse, cached", seeds=[2], width=64, height=64)
        again = flux.generate(["a lighthouse, cached", "a new prompt"], seeds=[2, 3], width=64, height=64)
    finally:
        hook.remove()
    assert len(t5_calls) == 2  # the second call encoded only the new prompt
    uncached = FluxEngine.load(FluxConfig(**TINY, prompt_cache_size=0))
    assert torch.equal(first, uncached.generate("a lighthouse, cached", seeds=[2], width=64, height=64))
    torch.testing.assert_close(again[:1], first, atol=1e-5, rtol=0)  # batch of two: last bits may move


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "x", "precision": "nf4", "fuse_qkv": True}, "fuse_qkv: NF4 weights are packed"),
        ({"model": "x", "text_encoder_offload": True, "cpu_offload": True}, "text_encoder_offload streams"),
        ({"model": "x", "cuda_graphs": 4, "cpu_offload": True}, "cuda_graphs: a graph replays fixed weight"),
        ({"model": "x", "precision": "nf4", "compile": "precompiled"}, "compile: precompiled regions need plain"),
    ],
)
def test_speed_options_that_cannot_work_together_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        FluxConfig(**options)


def test_cuda_graphs_on_a_cpu_engine_fail_at_load_with_the_field_named():
    with pytest.raises(ValueError, match="cuda_graphs: CUDA graphs need a CUDA device; this engine runs on cpu"):
        FluxEngine.load(FluxConfig(**TINY, cuda_graphs=2))
