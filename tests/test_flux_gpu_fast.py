"""The fast modes on a GPU: fused QKV, regional compile, CUDA graphs and fp8 draw the same images.

Full-size FLUX.1-schnell architecture with seeded random weights. Run: `pytest -m gpu -s tests/`.
"""

import pytest
import torch

from conftest import PROMPT, SIDE, free_cuda, generate, report
from deployments.config import FluxConfig
from deployments.engines.flux import FluxEngine
from deployments.engines.flux_speedups import optimize_pipeline
from deployments.vram import GIB

pytestmark = pytest.mark.gpu

FAST = {"fuse_qkv": True, "compile": "regional", "cuda_graphs": 2}
SEEDS = (21, 22)


@pytest.fixture(scope="module")
def reference_and_fast_engine():
    """Images from the plain bf16 engine, then the same engine (same weights) optimised in place."""
    engine = FluxEngine.load(FluxConfig(random_weights="full", precision="bf16", device="cuda"))
    reference = {seed: generate(engine, seed=seed).cpu() for seed in SEEDS}
    config = engine.config.model_copy(update=FAST)
    optimize_pipeline(engine.pipe, config)
    engine.config = config
    engine.warm_up([(SIDE, SIDE)], [1])
    yield reference, engine
    del engine
    free_cuda()


def test_compiled_and_graphed_engine_draws_the_plain_engines_images(reference_and_fast_engine):
    reference, engine = reference_and_fast_engine
    for seed in SEEDS:
        image = generate(engine, seed=seed)
        difference = (image.cpu() - reference[seed]).abs().mean().item()
        report(f"fast bf16 vs plain bf16, seed {seed}, mean |difference|", f"{difference:.5f}")
        assert difference < 0.01  # other kernels, same model: last-bit differences only
        assert torch.equal(image, generate(engine, seed=seed))  # a replayed graph is deterministic


def test_graphs_are_captured_per_shape_up_to_the_limit(reference_and_fast_engine):
    _, engine = reference_and_fast_engine
    graphed = engine.pipe.transformer.forward
    engine.generate([PROMPT, PROMPT], seeds=[1, 2], width=SIDE, height=SIDE)
    assert len(graphed) == 2  # batch 1 and batch 2 at 512x512
    wide = engine.generate(PROMPT, seeds=[3], width=768, height=SIDE)  # a third shape runs without a graph
    assert len(graphed) == 2 and wide.shape == (1, 3, SIDE, 768) and wide.std() > 0.01


def test_fp8_engine_stays_close_to_bf16(reference_and_fast_engine):
    reference, engine = reference_and_fast_engine
    engine.pipe = None  # free the bf16 model first: both would fit an 80 GB card, not a smaller one
    free_cuda()
    fp8 = FluxEngine.load(FluxConfig(random_weights="full", precision="fp8", device="cuda", **FAST))
    report("fp8 engine VRAM after load and warm-up", f"{torch.cuda.memory_allocated() / GIB:.2f} GiB")
    for seed in SEEDS:
        difference = (generate(fp8, seed=seed).cpu() - reference[seed]).abs().mean().item()
        report(f"fp8 vs bf16, seed {seed}, mean |difference| (pixel values in [0, 1])", f"{difference:.5f}")
        assert difference < 0.02


def test_no_request_compiles_or_captures_after_warm_up(reference_and_fast_engine):
    """A replica warms up every offered size at every batch size: requests of those shapes reuse what it built, and
    requests for more images than a batch holds run in parts of those shapes."""
    _, engine = reference_and_fast_engine
    engine.pipe = None
    free_cuda()
    sizes, batches = [(SIDE, SIDE), (768, SIDE)], (1, 2)
    config = FluxConfig(random_weights="full", precision="fp8", device="cuda", **{**FAST, "cuda_graphs": 4})
    fp8 = FluxEngine.load(config, warmup_sizes=sizes, warmup_batch_sizes=batches)
    runners = {
        "transformer": fp8.pipe.transformer.forward.function,  # under TransformerInParts
        "VAE": fp8.pipe.vae._decode,
        "CLIP": fp8.pipe.text_encoder.forward,
        "T5": fp8.pipe.text_encoder_2.forward,
    }
    captured = {name: len(runner) for name, runner in runners.items()}
    # Each size at each batch size; images decode one at a time, prompts encode one at a time.
    assert captured == {"transformer": 4, "VAE": 2, "CLIP": 1, "T5": 1}
    compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for width, height in sizes:
        for batch in (*batches, 3, 4):
            prompts = [f"a request of {batch} at {width}x{height}, image {i}" for i in range(batch)]
            fp8.generate(prompts, seeds=list(range(batch)), width=width, height=height)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == compiled
    assert {name: len(runner) for name, runner in runners.items()} == captured
    del fp8
    free_cuda()


def test_precompiled_fp8_engine_draws_the_same_images_and_a_restarted_one_loads_its_regions(
    reference_and_fast_engine, tmp_path
):
    """`compile: precompiled`: the first engine compiles and saves its regions, the next one (a restarted replica)
    reads every one of them ahead, as the first one's warm-up recorded them, and draws the same image, bit for bit:
    a loaded region's kernels take the launch settings the first engine's autotuning chose (before the regions were
    compiled without Triton's dynamic RBLOCK scaling, they autotuned again and drew images one bf16 step apart in
    places: H200, torch 2.11)."""
    reference, engine = reference_and_fast_engine
    engine.pipe = None
    free_cuda()
    config = FluxConfig(
        random_weights="full",
        precision="fp8",
        device="cuda",
        **{**FAST, "compile": "precompiled", "compile_cache_dir": str(tmp_path)},
    )
    images = []
    for expect_compiled in (True, False):
        fp8 = FluxEngine.load(config)
        regions = fp8.regions
        report(
            "precompiled fp8 engine: regions loaded (read ahead) / compiled, seconds",
            f"{regions.loaded} ({regions.read_ahead}) / {regions.compiled}, {regions.seconds:.1f} s",
        )
        assert (regions.compiled > 0) == expect_compiled and (regions.loaded > 0) != expect_compiled
        assert regions.read_ahead == regions.loaded and regions.read_unused == 0
        images.append(generate(fp8, seed=SEEDS[0]).cpu())
        del fp8
        free_cuda()
    assert all((image - reference[SEEDS[0]]).abs().mean().item() < 0.02 for image in images)
    assert torch.equal(images[0], images[1])
