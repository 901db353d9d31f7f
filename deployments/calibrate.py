"""Calibrate the verifier's thresholds on your own images: `python -m deployments.calibrate`.

    python -m deployments.calibrate --config serve_config.yaml --manifest my_images/manifest.jsonl

The manifest holds one JSON object per line, `{"image": "relative/path.png", "prompt": "..."}`, paths
relative to the manifest. Each CLIP model of the config's verifier scores every image against its
own prompt (matched pairs) and against the other images' prompts (mismatched pairs); the threshold
is the cosine that separates the two best (highest balanced accuracy). The command prints a table
and writes the `models:` block to paste under `verifier:` in the config.
"""

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from deployments.config import Calibration, VerifierConfig
from deployments.engines.clip import ClipEngine

BATCH = 32


def best_threshold(matched: np.ndarray, mismatched: np.ndarray) -> tuple[float, float]:
    """The cosine threshold with the highest balanced accuracy, and that accuracy."""
    candidates = np.unique(np.concatenate([matched, mismatched]))
    best, best_accuracy = float(candidates[0]), 0.0
    for low, high in itertools.pairwise(candidates):
        threshold = (low + high) / 2
        accuracy = ((matched >= threshold).mean() + (mismatched < threshold).mean()) / 2
        if accuracy > best_accuracy:
            best, best_accuracy = float(threshold), float(accuracy)
    return best, best_accuracy


def calibration_from_scores(matched: np.ndarray, mismatched: np.ndarray) -> tuple[Calibration, float]:
    """Statistics and threshold for one model; `ValueError` if it scores mismatched pairs as high as matched."""
    threshold, accuracy = best_threshold(matched, mismatched)
    calibration = Calibration(
        threshold=round(threshold, 4),
        matched_mean=round(float(matched.mean()), 4),
        matched_std=round(float(matched.std()), 4),
        mismatched_mean=round(float(mismatched.mean()), 4),
        mismatched_std=round(float(mismatched.std()), 4),
        pairs=len(matched),
    )
    return calibration, accuracy


def read_manifest(path: Path) -> list[tuple[Path, str]]:
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            entry = json.loads(line)
            if not isinstance(entry.get("image"), str) or not isinstance(entry.get("prompt"), str):
                raise ValueError(f"{path}:{number}: each line needs string fields 'image' and 'prompt'")
            entries.append((path.parent / entry["image"], entry["prompt"]))
    if len(set(prompt for _, prompt in entries)) < 2:
        raise ValueError(f"{path}: at least two different prompts are needed to form mismatched pairs")
    return entries


def pair_scores(engine: ClipEngine, entries: list[tuple[Path, str]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per model: cosines of matched pairs, and of every image with every other prompt."""
    image_features: dict[str, list[torch.Tensor]] = {}
    prompt_features: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(entries), BATCH):
        batch = [
            (np.asarray(Image.open(path).convert("RGB"))[None], prompt)
            for path, prompt in entries[start : start + BATCH]
        ]
        images, prompts = engine.embed(batch)
        for name in images:
            image_features.setdefault(name, []).append(images[name].cpu())
            prompt_features.setdefault(name, []).append(prompts[name].cpu())
    prompts = [prompt for _, prompt in entries]
    different_prompt = np.array([[a != b for b in prompts] for a in prompts])
    scores = {}
    for name in image_features:
        cosines = (torch.cat(image_features[name]) @ torch.cat(prompt_features[name]).T).numpy()
        scores[name] = (np.diag(cosines).copy(), cosines[different_prompt])
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="Serve config whose verifier to calibrate.")
    parser.add_argument("--manifest", type=Path, required=True, help="JSONL of {image, prompt}.")
    parser.add_argument("--app", default=None, help="Application name in the config (default: the first).")
    parser.add_argument("--out", type=Path, default=None, help="Write the models block here too.")
    args = parser.parse_args(argv)

    applications = yaml.safe_load(args.config.read_text())["applications"]
    app = next(a for a in applications if args.app in (None, a["name"]))
    config = VerifierConfig.model_validate(app["args"]["verifier"])
    engine = ClipEngine.load(config)
    scores = pair_scores(engine, read_manifest(args.manifest))

    print(f"{'model':<28}{'matched':>18}{'mismatched':>18}{'threshold':>11}{'bal. acc.':>11}")
    models, useless = [], []
    for model in config.models:
        matched, mismatched = scores[model.name]
        try:
            calibration, accuracy = calibration_from_scores(matched, mismatched)
        except ValueError:
            useless.append(model.name)
            print(f"{model.name:<28}{matched.mean():>17.3f} {mismatched.mean():>17.3f}  cannot separate them")
            continue
        print(
            f"{model.name:<28}{calibration.matched_mean:>10.3f} ±{calibration.matched_std:.3f}"
            f"{calibration.mismatched_mean:>10.3f} ±{calibration.mismatched_std:.3f}"
            f"{calibration.threshold:>11.3f}{accuracy:>11.3f}"
        )
        models.append(model.model_copy(update={"calibration": calibration}).model_dump())
    if useless:
        parser.exit(
            2,
            f"error: {', '.join(useless)} scored mismatched pairs as high as matched ones on these images: "
            "such a model cannot vote. Check the manifest, use more images, or drop the model.\n",
        )
    block = yaml.safe_dump({"models": models}, sort_keys=False)
    print(f"\n# paste under `verifier:` in {args.config}\n{block}")
    if args.out:
        args.out.write_text(block)


if __name__ == "__main__":
    main()
