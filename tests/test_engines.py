"""The engines on their own (plain PyTorch, no Ray), with the tiny random-weight models."""

import numpy as np
import open_clip
import pytest

from deployments.engines.clip import ClipEngine, ClipModelConfig, VerifierConfig
from deployments.engines.flux import FluxConfig, FluxEngine
from deployments.engines.tiny import clip_bpe_tokenizer


@pytest.fixture(scope="module")
def flux() -> FluxEngine:
    return FluxEngine.load(FluxConfig(random_weights="tiny", precision="fp32", device="cpu"))


@pytest.fixture(scope="module")
def verifier() -> ClipEngine:
    models = [
        ClipModelConfig(name="tiny-clip-a", pretrained=None, threshold=-1.0),
        ClipModelConfig(name="tiny-clip-b", pretrained=None, threshold=1.0, weight=3.0),
    ]
    return ClipEngine.load(VerifierConfig(models=models, device="cpu"))


@pytest.mark.parametrize(
    "prompt",
    ["A photo of an astronaut riding a horse on Mars, 4k!", "naïve café — 東京 <b>bold</b>\tand CAPS", ""],
)
def test_clip_tokenizer_matches_open_clip_token_ids(prompt):
    ours = clip_bpe_tokenizer()(prompt).input_ids
    reference = open_clip.get_tokenizer("ViT-L-14")([prompt])[0].tolist()
    assert ours == reference[: len(ours)]
    assert clip_bpe_tokenizer().model_max_length == 77


def test_flux_images_are_deterministic_per_seed(flux):
    first = flux.generate("a red fox", seeds=[1, 2], width=256, height=128)
    assert first.shape == (2, 128, 256, 3) and first.dtype == np.uint8
    assert np.array_equal(first, flux.generate("a red fox", seeds=[1, 2], width=256, height=128))
    assert not np.array_equal(first[0], first[1])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": "  "}, "prompt"),
        ({"seeds": []}, "seeds"),
        ({"width": 100}, "width"),
        ({"height": 0}, "height"),
        ({"steps": 0}, "steps"),
    ],
)
def test_flux_rejects_invalid_parameters_naming_the_field(flux, kwargs, field):
    call = {"prompt": "a cat", "seeds": [0], "width": 64, "height": 64, **kwargs}
    with pytest.raises(ValueError, match=f"^{field}:"):
        flux.generate(call.pop("prompt"), **call)


def test_verifier_scores_each_image_per_model_and_decides(verifier, flux):
    images = flux.generate("a red fox", seeds=[1, 2, 3], width=64, height=64)
    verdicts = verifier.verify(images, "a red fox")
    assert len(verdicts) == 3
    for verdict in verdicts:
        a, b = verdict.scores["tiny-clip-a"], verdict.scores["tiny-clip-b"]
        assert -1.0 <= a <= 1.0 and -1.0 <= b <= 1.0
        assert verdict.ensemble_score == pytest.approx((a + 3 * b) / 4)
        assert verdict.passed is False  # tiny-clip-b's threshold of 1.0 cannot be reached
