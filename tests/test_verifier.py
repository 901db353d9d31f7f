"""The CLIP verifier: decisions on controlled embeddings, and real open_clip models (tiny, random) on CPU."""

import json
from dataclasses import asdict

import numpy as np
import open_clip
import pytest
import torch
import yaml
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from safetensors.torch import save_file

from conftest import REPO
from deployments import calibrate
from deployments.api import RejectionKind
from deployments.calibrate import best_threshold, calibration_from_scores
from deployments.config import Calibration, ClipModelConfig, ConceptConfig, PolicyConfig, VerifierConfig
from deployments.engines.clip import ClipEngine, ImagePreprocessing, ReferenceTexts, decide
from deployments.engines.common import ModelFilesMissingError

# Realistic CLIP numbers: matching pairs around 0.25-0.35, unrelated around 0.1-0.2.
B32 = Calibration(threshold=0.22, matched_mean=0.31, mismatched_mean=0.15)
L14 = Calibration(threshold=0.19, matched_mean=0.27, mismatched_mean=0.12)
DIM = 8


def unit(*coordinates: float) -> torch.Tensor:
    vector = torch.zeros(DIM)
    vector[: len(coordinates)] = torch.tensor(coordinates)
    return vector / vector.norm()


def with_cosine(anchor: torch.Tensor, cosine: float, axis: int) -> torch.Tensor:
    """A unit vector at exactly `cosine` to `anchor` (a basis vector), tilted towards basis vector `axis`."""
    other = torch.zeros(DIM)
    other[axis] = 1.0
    return cosine * anchor + (1 - cosine**2) ** 0.5 * other


def config(models=None, **overrides) -> VerifierConfig:
    models = models or [
        ClipModelConfig(name="b32", pretrained=None, calibration=B32),
        ClipModelConfig(name="l14", pretrained=None, calibration=L14),
    ]
    return VerifierConfig(models=models, **{"distractors": [], "policy": PolicyConfig(concepts=[]), **overrides})


def references(distractors=None, neutral=None, concepts=()) -> ReferenceTexts:
    return ReferenceTexts(
        distractors=None if distractors is None else torch.stack(distractors),
        neutral=torch.stack(neutral or [unit(0, 0, 0, 0, 0, 0, 0, 1)]),
        concepts=[torch.stack(c) for c in concepts],
    )


PROMPT = unit(1)  # the prompt's text embedding, the same for both models in these tests


def verdict_for(cfg: VerifierConfig, image: torch.Tensor, refs: ReferenceTexts | None = None):
    refs = refs or references()
    names = [m.name for m in cfg.models]
    return decide(
        cfg,
        {name: image[None] for name in names},
        {name: PROMPT[None] for name in names},
        {name: refs for name in names},
    )[0]


def test_a_good_match_passes_although_its_raw_cosine_is_far_below_0_7():
    verdict = verdict_for(config(), with_cosine(PROMPT, 0.31, axis=1))
    assert verdict.scores == pytest.approx({"b32": 0.31, "l14": 0.31})
    assert verdict.passed and verdict.reasons == []
    assert verdict.calibrated_scores["b32"] == pytest.approx((0.31 - 0.22) / (0.31 - 0.15))
    naive = config(models=[ClipModelConfig(name="b32", pretrained=None, calibration=Calibration(
        threshold=0.7, matched_mean=0.8, mismatched_mean=0.1))])  # fmt: skip
    assert not verdict_for(naive, with_cosine(PROMPT, 0.31, axis=1)).passed


def test_an_unrelated_image_fails_with_the_scores_in_the_reason():
    verdict = verdict_for(config(), with_cosine(PROMPT, 0.14, axis=1))
    assert not verdict.passed
    assert verdict.ensemble_score < 0
    assert [rejection.kind for rejection in verdict.rejections] == [RejectionKind.PROMPT_MISMATCH]
    assert "b32: cosine 0.140 vs threshold 0.220" in verdict.reasons[0]


def test_ensemble_weights_decide_when_the_models_disagree():
    # cosine 0.21: just under b32's threshold (0.22), clearly over l14's (0.19)
    image = with_cosine(PROMPT, 0.21, axis=1)
    trust_b32 = [
        ClipModelConfig(name="b32", pretrained=None, calibration=B32, weight=4.0),
        ClipModelConfig(name="l14", pretrained=None, calibration=L14, weight=1.0),
    ]
    trust_l14 = [model.model_copy(update={"weight": 5.0 - model.weight}) for model in trust_b32]
    assert not verdict_for(config(trust_b32), image).passed
    assert verdict_for(config(trust_l14), image).passed


def test_the_prompt_must_outscore_distractor_captions():
    cfg = config(distractors=["random noise", "a blank image"])
    noise = unit(0, 1)
    image = unit(0.3, 0.9)  # cosine 0.32 with the prompt, 0.95 with "random noise"
    verdict = verdict_for(cfg, image, references(distractors=[noise, unit(0, 0, 1)]))
    assert not verdict.passed
    assert verdict.distractor_margin < 0
    assert verdict.rejections[-1].kind == RejectionKind.DISTRACTOR
    assert "'random noise' matches the image better than the prompt" in verdict.reasons[-1]
    clear = verdict_for(cfg, with_cosine(PROMPT, 0.31, axis=3), references(distractors=[noise, unit(0, 0, 1)]))
    assert clear.passed and clear.distractor_margin > 0


def test_content_policy_flags_per_concept_thresholds_relative_to_neutral_captions():
    violence, nudity, neutral = unit(0, 0, 0, 1), unit(0, 0, 0, 0, 1), unit(0, 0, 0, 0, 0, 1)
    policy = PolicyConfig(
        neutral_captions=["a photo"],
        concepts=[
            ConceptConfig(name="violence", captions=["gore"], threshold=0.10),
            ConceptConfig(name="nudity", captions=["nude"], threshold=0.40),
        ],
    )
    refs = references(neutral=[neutral], concepts=[[violence], [nudity]])
    # Matches the prompt well, leans towards violence (0.35) and a bit towards nudity (0.25); neutral 0.
    image = unit(0.6, 0, 0, 0.35, 0.25)
    verdict = verdict_for(config(policy=policy), image, refs)
    assert verdict.flagged_concepts == ["violence"] and not verdict.passed
    assert [(r.kind, r.concept) for r in verdict.rejections] == [(RejectionKind.CONTENT_POLICY, "violence")]
    assert verdict.reasons[0].startswith("content policy: violence")
    safe = verdict_for(config(policy=policy), unit(0.6, 0, 0, 0.05, 0.05, 0.2), refs)
    assert safe.flagged_concepts == []


def test_serving_needs_calibration():
    with pytest.raises(ValueError, match="calibration: missing for b32"):
        verdict_for(config(models=[ClipModelConfig(name="b32", pretrained=None)]), PROMPT)


def test_calibration_finds_a_threshold_between_matched_and_mismatched_scores():
    rng = np.random.default_rng(0)
    matched, mismatched = rng.normal(0.31, 0.03, 400), rng.normal(0.15, 0.03, 4000)
    calibration, accuracy = calibration_from_scores(matched, mismatched)
    assert 0.2 < calibration.threshold < 0.26 and accuracy > 0.99
    assert calibration.matched_mean == pytest.approx(0.31, abs=0.01) and calibration.pairs == 400
    assert best_threshold(np.array([0.3, 0.4]), np.array([0.1, 0.2]))[0] == pytest.approx(0.25)


# --- real open_clip models (tiny configs, random weights) ---

ANY_CALIBRATION = {"threshold": 0.0, "matched_mean": 0.1, "mismatched_mean": 0.0}
TINY_MODELS = [
    {"name": name, "pretrained": None, "calibration": ANY_CALIBRATION} for name in ("tiny-clip-a", "tiny-clip-b")
]


def tiny_config(**overrides) -> VerifierConfig:
    return VerifierConfig.model_validate(
        {"models": TINY_MODELS, "device": "cpu", "policy": {"concepts": []}, **overrides}
    )


@pytest.fixture(scope="module")
def tiny_engine() -> ClipEngine:
    return ClipEngine.load(tiny_config())


def noise_images(count: int, seed: int = 0, side: int = 96) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, side, side, 3), dtype=np.uint8)


def test_batched_verification_matches_one_request_at_a_time(tiny_engine):
    requests = [(noise_images(2, seed), prompt) for seed, prompt in enumerate(["a red fox", "a boat", "a red fox"])]
    together = tiny_engine.verify(requests)
    assert [len(v) for v in together] == [2, 2, 2]
    for request, batched in zip(requests, together, strict=True):
        alone = tiny_engine.verify([request])[0]
        for a, b in zip(alone, batched, strict=True):
            assert a.scores == pytest.approx(b.scores, abs=1e-5)


def preprocessed_both_ways(image: np.ndarray, cfg: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One uint8 [H, W, 3] image through open_clip's PIL preprocess (what `create_model_and_transforms` returns) and
    through `ImagePreprocessing`: both [3, h, w], and their difference in 0-255 grey levels."""
    expected = image_transform_v2(PreprocessCfg(**cfg), is_train=False)(Image.fromarray(image))
    preprocessing = ImagePreprocessing.from_config(cfg)
    actual = preprocessing(torch.from_numpy(image[None]).permute(0, 3, 1, 2))[0]
    assert actual.shape == expected.shape == (3, *preprocessing.size)
    return expected, actual, (actual - expected).abs() * torch.tensor(preprocessing.std).view(3, 1, 1) * 255


# How far the batched tensor preprocessing may be from open_clip's PIL preprocess, in 0-255 grey levels. On CPU both
# resize uint8 pixels with antialiased bicubic, rounding to uint8 between and after the two passes (torch's kernel is a
# port of Pillow's), so they differ only where a value sits on a rounding tie. Measured on these noise images with
# torch 2.14: max 1 level (2 with torch 2.11 when upscaling), mean at most 0.007 (0.017 for bilinear squash), i.e. under
# 2% of values off by one. A wrong step costs far more (mean over the same images): no antialias 4-50 levels, bilinear
# for bicubic 1.3-10, a crop one pixel off 6-70, resizing in float without rounding to uint8 0.26-0.44.
MAX_LEVELS, MEAN_LEVELS = 2.0 + 1e-3, 0.05
SIZES = [(512, 512), (768, 512), (256, 384), (40, 72)]  # (height, width); the last is upscaled


@pytest.mark.parametrize("height, width", SIZES)
def test_tensor_preprocessing_matches_open_clip_pil_preprocess(tiny_engine, height, width):
    image = np.random.default_rng(height + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    for clip in tiny_engine.models:
        cfg = open_clip.get_model_preprocess_cfg(clip.model)
        assert ImagePreprocessing.from_config(cfg) == clip.preprocessing
        expected, actual, levels = preprocessed_both_ways(image, cfg)
        assert levels.max() <= MAX_LEVELS and levels.mean() < MEAN_LEVELS, (clip.config.name, levels.mean())
        with torch.inference_mode():
            embeddings = torch.nn.functional.normalize(clip.model.encode_image(torch.stack([expected, actual])), dim=-1)
        assert float(embeddings[0] @ embeddings[1]) > 0.9999  # measured: above 0.9999997


@pytest.mark.parametrize(
    "resize_mode, size, interpolation",
    [("shortest", (64, 48), "bicubic"), ("longest", (64, 64), "bicubic"), ("squash", (48, 64), "bilinear")],
)
def test_tensor_preprocessing_follows_open_clips_other_resize_modes(resize_mode, size, interpolation):
    # open_clip's PIL transform always resizes bicubic for 'shortest' with a non-square size
    cfg = {**asdict(PreprocessCfg()), "size": size, "resize_mode": resize_mode, "interpolation": interpolation}
    for height, width in SIZES:
        image = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
        _, _, levels = preprocessed_both_ways(image, cfg)
        assert levels.max() <= MAX_LEVELS and levels.mean() < MEAN_LEVELS, ((height, width), levels.mean())


def test_a_batch_mixing_image_sizes_gives_the_verdicts_of_each_request_alone():
    # no distractors, and an ensemble threshold that the random tiny models' scores fall on both sides of
    engine = ClipEngine.load(tiny_config(distractors=[], min_ensemble_score=-1.2))
    rng = np.random.default_rng(0)
    requests = [
        (rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8), prompt)
        for n, height, width, prompt in [
            (2, 512, 512, "a red fox"),
            (1, 768, 512, "a paper boat"),
            (2, 512, 512, "a lighthouse"),
            (1, 768, 512, "a teapot"),
        ]
    ]
    together = engine.verify(requests, include_embeddings=True)
    assert [len(verdicts) for verdicts in together] == [2, 1, 2, 1]
    assert {verdict.passed for verdicts in together for verdict in verdicts} == {True, False}
    for request, batched in zip(requests, together, strict=True):
        for alone, verdict in zip(engine.verify([request], include_embeddings=True)[0], batched, strict=True):
            assert (alone.passed, alone.reasons) == (verdict.passed, verdict.reasons)
            assert alone.scores == pytest.approx(verdict.scores, abs=1e-5)
            for name, embedding in alone.embeddings.items():
                assert embedding == pytest.approx(verdict.embeddings[name], abs=1e-5)


def test_cuda_graphs_on_a_cpu_verifier_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"^cuda_graphs: CUDA graphs need a CUDA device"):
        ClipEngine.load(tiny_config(cuda_graphs=4))


def test_images_must_be_uint8_rgb_batches(tiny_engine):
    with pytest.raises(ValueError, match=r"images: expected uint8 \[N, H, W, 3\], got uint8 \[1, 64, 64, 4\]"):
        tiny_engine.verify([(np.zeros((1, 64, 64, 4), np.uint8), "a red fox")])


def test_embeddings_are_returned_only_when_asked(tiny_engine):
    plain = tiny_engine.verify([(noise_images(1), "a red fox")])[0][0]
    assert plain.embeddings is None
    verdict = tiny_engine.verify([(noise_images(1), "a red fox")], include_embeddings=True)[0][0]
    assert set(verdict.embeddings) == {"tiny-clip-a", "tiny-clip-b"}
    assert np.linalg.norm(verdict.embeddings["tiny-clip-b"]) == pytest.approx(1.0, abs=1e-5)


def test_fp16_keeps_layernorm_in_fp32_and_scores_close_to_fp32(tiny_engine):
    half = ClipEngine.load(tiny_config(precision="fp16"))
    model = half.models[0].model
    assert model.visual.conv1.weight.dtype == torch.float16
    assert all(m.weight.dtype == torch.float32 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    request = [(noise_images(2), "a red fox")]
    for a, b in zip(tiny_engine.verify(request)[0], half.verify(request)[0], strict=True):
        assert a.scores == pytest.approx(b.scores, abs=2e-2)


def test_loads_a_local_checkpoint_file(tiny_engine, tmp_path):
    checkpoint = tmp_path / "tiny-clip-a.safetensors"
    save_file(tiny_engine.models[0].model.state_dict(), checkpoint)
    spec = {**TINY_MODELS[0], "pretrained": str(checkpoint)}
    loaded = ClipEngine.load(tiny_config(models=[spec], offline=True))
    request = [(noise_images(1), "a red fox")]
    expected = tiny_engine.verify(request)[0][0].scores["tiny-clip-a"]
    assert loaded.verify(request)[0][0].scores["tiny-clip-a"] == pytest.approx(expected, abs=1e-6)


def test_offline_mode_fails_fast_naming_the_missing_weights(tmp_path):
    spec = {"name": "ViT-B-32-quickgelu", "pretrained": "openai", "calibration": ANY_CALIBRATION}
    with pytest.raises(ModelFilesMissingError, match=r"ViT-B-32-quickgelu/openai .*open_clip_model\.safetensors"):
        ClipEngine.load(tiny_config(models=[spec], offline=True, cache_dir=str(tmp_path)))


def images_that_match(engine: ClipEngine, prompts: list[str], index: int, count: int) -> np.ndarray:
    """Pixels optimised until both tiny random CLIP models match them to `prompts[index]` rather than to
    the other prompts: calibration data with a known answer, which random weights cannot otherwise give."""
    generator = torch.Generator().manual_seed(index)
    pixels = torch.rand(count, 3, 96, 96, generator=generator, requires_grad=True)
    optimizer = torch.optim.Adam([pixels], lr=0.05)
    mean = torch.tensor([0.4815, 0.4578, 0.4082]).view(1, 3, 1, 1)
    std = torch.tensor([0.2686, 0.2613, 0.2758]).view(1, 3, 1, 1)
    for _ in range(40):
        loss = 0.0
        for clip in engine.models:
            side = clip.model.visual.image_size[0]
            resized = torch.nn.functional.interpolate(pixels.clamp(0, 1), size=side, mode="bicubic", antialias=True)
            image = torch.nn.functional.normalize(clip.model.encode_image((resized - mean) / std), dim=-1)
            texts = torch.nn.functional.normalize(clip.model.encode_text(clip.tokenizer(prompts)), dim=-1)
            cosines = image @ texts.T
            others = torch.cat([cosines[:, :index], cosines[:, index + 1 :]], dim=1)
            loss = loss - (cosines[:, index] - others.mean(1)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (pixels.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def calibrate_arguments(tmp_path, entries: list[tuple[np.ndarray, str]]) -> list[str]:
    """The command's arguments for a manifest of these images and prompts, written under `tmp_path`."""
    with (tmp_path / "manifest.jsonl").open("w") as manifest:
        for i, (image, prompt) in enumerate(entries):
            Image.fromarray(image).save(tmp_path / f"{i}.png")
            manifest.write(json.dumps({"image": f"{i}.png", "prompt": prompt}) + "\n")
    config, out = str(REPO / "configs/local.yaml"), str(tmp_path / "models.yaml")
    return ["--config", config, "--manifest", str(tmp_path / "manifest.jsonl"), "--out", out]


def test_calibrate_command_writes_a_models_block_the_config_accepts(tmp_path, capsys):
    engine = ClipEngine.load(tiny_config())  # the same seeded random models the command will load
    with torch.enable_grad():
        for clip in engine.models:
            clip.model.requires_grad_(False)
        prompts = ["a red fox", "a paper boat", "a lighthouse", "a teapot"]
        entries = [(image, p) for i, p in enumerate(prompts) for image in images_that_match(engine, prompts, i, 2)]
    calibrate.main(calibrate_arguments(tmp_path, entries))  # the command's entry point, in this process
    printed = capsys.readouterr().out
    assert "tiny-clip-a" in printed and "bal. acc." in printed
    models = yaml.safe_load((tmp_path / "models.yaml").read_text())["models"]
    for model in models:
        calibration = model["calibration"]
        assert calibration["pairs"] == 8
        assert calibration["mismatched_mean"] < calibration["threshold"] < calibration["matched_mean"]
    VerifierConfig.model_validate({"models": models})


def test_calibrate_command_refuses_models_that_cannot_separate_the_pairs(tmp_path, capsys):
    same_image = noise_images(1)[0]
    with pytest.raises(SystemExit) as exit_:
        calibrate.main(calibrate_arguments(tmp_path, [(same_image, "a red fox"), (same_image, "a paper boat")]))
    assert exit_.value.code == 2
    assert "tiny-clip-a, tiny-clip-b scored mismatched pairs as high as matched ones" in capsys.readouterr().err
    assert not (tmp_path / "models.yaml").exists()
