"""What every benchmark shares: prompts that never repeat, the timing loop, percentiles, the plain-diffusers
baseline call, random-weight verifier settings, and the card and versions a table is labelled with.

The benchmarks run from the repository root as modules: `python -m benchmarks.NAME`.
"""

import importlib.metadata
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from deployments.config import ACCEPT_ALL, VerifierConfig

REPO = Path(__file__).resolve().parents[1]
SIDE, STEPS, T5_TOKENS = 512, 4, 256  # the README's request: 512x512, 4 steps; T5 reads 256 tokens

SUBJECTS = [
    "a lighthouse on a cliff at dusk",
    "a red fox in the snow",
    "a busy harbour at dawn",
    "a teapot on a wooden table",
    "a city skyline at night",
    "a mountain lake in autumn",
    "a paper boat on a puddle",
    "an old library with tall shelves",
]
STYLES = ["oil painting", "watercolour", "photograph", "pencil sketch", "pixel art"]


def prompt(index: int) -> str:
    """A different prompt for every index, so that no prompt cache can answer twice."""
    subject = SUBJECTS[index % len(SUBJECTS)]
    style = STYLES[index // len(SUBJECTS) % len(STYLES)]
    return f"{subject}, {style}, variation {index}"


def synchronize() -> None:
    """Wait for the GPU, where there is one: a timing must include the work it launched."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(call: Callable[[], object], iterations: int) -> list[float]:
    """Seconds of each of `iterations` calls, the device synchronized around each."""
    seconds = []
    for _ in range(iterations):
        synchronize()
        start = time.perf_counter()
        call()
        synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: with few samples, P99 is the slowest."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def diffusers_runner(pipe, side: int = SIDE, height: int | None = None) -> Callable[[list[str], list[int]], object]:
    """The baseline: plain `FluxPipeline.__call__` as its documentation shows it, one image per seed, `side`
    wide and `height` (default `side`) high."""
    import torch

    def run(prompts: list[str], seeds: list[int]):
        return pipe(
            prompts,
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
            width=side,
            height=height or side,
            num_inference_steps=STEPS,
            guidance_scale=0.0,
            max_sequence_length=T5_TOKENS,
            output_type="pt",
        ).images

    return run


def random_weight_verifier(verifier: dict) -> dict:
    """A `verifier:` block with random weights of the same CLIP architectures (no download; the same speed
    and memory) and a calibration that accepts every image, so each request is exactly one generation."""
    models = VerifierConfig.model_validate(verifier).models
    models = [model.model_copy(update={"pretrained": None, "calibration": ACCEPT_ALL}).model_dump() for model in models]
    return {**verifier, "models": models, "distractors": [], "policy": {"concepts": []}}


def app_args(profile: str) -> dict:
    """The `args:` of a profile's application (`profile` relative to the repository root), as its YAML has them."""
    return yaml.safe_load((REPO / profile).read_text())["applications"][0]["args"]


def card_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU rehearsal"


def versions() -> dict[str, str | None]:
    """Installed versions of what the numbers depend on."""
    found: dict[str, str | None] = {}
    for package in ("torch", "diffusers", "bitsandbytes", "open_clip_torch", "ray"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found
