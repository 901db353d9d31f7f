"""Dual-CLIP verification latency on one GPU: eager encoders against CUDA graph replays.

    python -m benchmarks.verifier_speed [--out verifier_speed.json]
    python -m benchmarks.verifier_speed --rehearse      # CPU, tiny models, eager only: the script still runs

The default verifier (ViT-B-32 and ViT-L-14, fp16, seeded random weights of the real architectures:
speed does not depend on weight values) verifies 512x512 uint8 images, as the generator returns
them, one prompt per image: preprocessing on the GPU, both image towers, both text towers and the
decision. Per batch size it prints the P50 of `ClipEngine.verify` with `cuda_graphs: 0` and with
`cuda_graphs: 8`, names the card and writes JSON.
"""

import argparse
import json
import statistics
import time

import numpy as np
import torch

from benchmarks.common import SIDE, card_name, random_weight_verifier, timed, versions
from deployments.config import VerifierConfig
from deployments.engines.clip import ClipEngine

BATCHES = (1, 2, 4, 8)
TINY_MODELS = [{"name": name, "pretrained": None} for name in ("tiny-clip-a", "tiny-clip-b")]


def p50_ms(engine: ClipEngine, batch: list, iterations: int) -> float:
    engine.verify(batch)  # a batch size beyond the captured ones is captured on first use
    return 1000 * statistics.median(timed(lambda: engine.verify(batch), iterations))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--rehearse", action="store_true", help="CPU rehearsal: tiny models, no CUDA graphs.")
    parser.add_argument("--out", default="verifier_speed.json")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    batches = {
        size: [(rng.integers(0, 256, (1, SIDE, SIDE, 3), dtype=np.uint8), f"prompt {i}") for i in range(size)]
        for size in BATCHES
    }
    card = card_name()
    verifier = {"device": "cpu", "models": TINY_MODELS} if args.rehearse else {"device": "cuda"}
    results = {}
    for graphs in (0,) if args.rehearse else (0, 8):
        config = VerifierConfig.model_validate(random_weight_verifier({**verifier, "cuda_graphs": graphs}))
        start = time.perf_counter()
        engine = ClipEngine.load(config)  # captures graphs for batches of 1 to cuda_graphs images
        results[graphs] = {
            "load_s": time.perf_counter() - start,
            "precision": str(engine.dtype),
            "p50_ms": {b: p50_ms(engine, batches[b], args.iterations) for b in BATCHES},
        }
        del engine
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    models = " + ".join(model["name"] for model in config.model_dump()["models"])
    print(f"\ndual-CLIP verification ({models}), {SIDE}x{SIDE} images; card: {card}; {versions()}")
    print(f"{'cuda_graphs':<12}{'load s':>8}" + "".join(f"{'batch ' + str(b) + ' ms':>13}" for b in BATCHES))
    for graphs, row in results.items():
        print(f"{graphs:<12}{row['load_s']:>8.1f}" + "".join(f"{row['p50_ms'][b]:>13.1f}" for b in BATCHES))
    with open(args.out, "w") as f:
        json.dump({"card": card, "versions": versions(), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
