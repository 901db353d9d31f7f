"""The bf16 Flux engine on a GPU: the full-size FLUX.1-schnell architecture with seeded random weights.

Run on a CUDA machine: `pytest -m gpu -s tests/` (prints what it measured, naming the card).
"""

import logging

import pytest
import torch

from conftest import PROMPT, SIDE, free_cuda, generate, report
from deployments.api import OutOfGpuMemoryError
from deployments.config import FluxConfig
from deployments.engines.flux import FluxEngine
from deployments.vram import GIB

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def bf16_engine():
    """The full-size architecture built on the GPU in bf16 (never all-zero weights)."""
    config = FluxConfig(random_weights="full", precision="bf16", device="cuda")
    engine = FluxEngine.load(config)
    report("bf16 engine VRAM after load", f"{torch.cuda.memory_allocated() / GIB:.2f} GiB")
    yield engine
    del engine
    free_cuda()


def test_random_weights_are_not_zero(bf16_engine):
    """Timing all-zero weights would flatter every kernel; each linear layer must hold random values."""
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        linears = [m for m in getattr(bf16_engine.pipe, name).modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(m.weight.float().std() > 0 for m in linears), name


def test_same_seed_same_card_is_bit_identical(bf16_engine):
    first = generate(bf16_engine, seed=11)
    assert first.is_cuda and first.shape == (1, 3, SIDE, SIDE)
    assert torch.equal(first, generate(bf16_engine, seed=11))
    assert not torch.equal(first, generate(bf16_engine, seed=12))
    assert first.std() > 0.01  # random weights still draw something that is not a flat image


def test_writes_into_a_preallocated_gpu_tensor(bf16_engine):
    out = torch.empty(3, SIDE, SIDE, device="cuda")
    assert generate(bf16_engine, seed=3, out=out) is out
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert torch.equal(out, generate(bf16_engine, seed=3)[0])


def test_long_prompt_warns_with_token_counts(bf16_engine, caplog):
    prompt = "an extremely detailed matte painting of a lighthouse on a cliff at dusk " * 7
    with caplog.at_level(logging.WARNING, logger="deployments.engines.flux"):
        bf16_engine.generate(prompt, seeds=[0], width=SIDE, height=SIDE)
    count = len(bf16_engine.pipe.tokenizer(prompt).input_ids)
    assert f"Prompt is {count} CLIP tokens; CLIP reads only the first 77." in caplog.text


def test_no_vram_growth_over_ten_generations(bf16_engine):
    generate(bf16_engine)  # warm-up: allocator pools and cuBLAS workspaces
    baseline = torch.cuda.memory_allocated()
    after_each = []
    for seed in range(10):
        generate(bf16_engine, seed=seed)
        after_each.append(torch.cuda.memory_allocated())
    report("allocated after each of 10 generations (MiB)", str([round(b / 2**20) for b in after_each]))
    assert max(after_each) <= baseline


def test_out_of_memory_is_a_typed_error_and_the_engine_recovers(bf16_engine):
    free, total = torch.cuda.mem_get_info()
    filler = torch.empty(free - 2 * GIB, dtype=torch.uint8, device="cuda")  # leave 2 GiB
    with pytest.raises(OutOfGpuMemoryError, match="out of GPU memory during generation") as error:
        bf16_engine.generate(PROMPT, seeds=list(range(8)), width=1024, height=1024)
    assert error.value.total_bytes == total and error.value.allocated_bytes > 0
    report("OOM error message", str(error.value))
    del filler
    free_cuda()
    assert generate(bf16_engine).shape == (1, 3, SIDE, SIDE)


def test_a_request_above_the_warmed_up_batch_replays_the_captured_graphs_in_parts(bf16_engine):
    """A graphed engine warmed up for batches of 1-2 images serves a request for 4 as two replays of the batch-2
    transformer graphs and four of the decoder's one-image graph: nothing is captured on the request, and its images
    are those of the same prompts requested 2 at a time, bit for bit."""
    bf16_engine.pipe = None  # two full-size engines would not fit a smaller card
    free_cuda()
    config = FluxConfig(random_weights="full", precision="bf16", device="cuda", cuda_graphs=2)
    engine = FluxEngine.load(config, warmup_batch_sizes=(1, 2))  # 512x512, no compile: graphs only
    runners = {"transformer": engine.pipe.transformer.forward.function, "decoder": engine.pipe.vae._decode}
    assert {name: len(runner) for name, runner in runners.items()} == {"transformer": 2, "decoder": 1}
    prompts = [f"{PROMPT}, variation {i}" for i in range(4)]
    images = engine.generate(prompts, seeds=[1, 2, 3, 4], width=SIDE, height=SIDE)
    assert {name: len(runner) for name, runner in runners.items()} == {"transformer": 2, "decoder": 1}
    assert torch.equal(images[2:], engine.generate(prompts[2:], seeds=[3, 4], width=SIDE, height=SIDE))
    del engine
    free_cuda()
