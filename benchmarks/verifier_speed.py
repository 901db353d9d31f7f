"""Dual-CLIP verification latency on one GPU: eager encoders against CUDA graph replays.

    python benchmarks/verifier_speed.py [--out verifier_speed.json]

The verifier of `configs/gpu-80gb.yaml` (ViT-B-32 and ViT-L-14, fp16, seeded random weights of the
real architectures: speed does not depend on weight values) verifies 512x512 uint8 images, as the
generator returns them, one prompt per image: preprocessing on the GPU, both image towers, both
text towers and the decision. Per batch size it prints the P50 of `ClipEngine.verify` with
`cuda_graphs: 0` and with `cuda_graphs: 8`, names the card and writes JSON.
"""

import argparse
import json
import statistics
import time

import numpy as np
import torch

from deployments.engines.clip import ClipEngine, VerifierConfig

ACCEPT_ALL = {"threshold": -1.0, "matched_mean": 0.1, "mismatched_mean": 0.0}
MODELS = [
    {"name": "ViT-B-32-quickgelu", "pretrained": None, "calibration": ACCEPT_ALL},
    {"name": "ViT-L-14-quickgelu", "pretrained": None, "calibration": ACCEPT_ALL},
]
BATCHES = (1, 2, 4, 8)


def p50_ms(engine: ClipEngine, batch: list, iterations: int) -> float:
    engine.verify(batch)  # a batch size beyond the captured ones is captured on first use
    seconds = []
    for _ in range(iterations):
        torch.cuda.synchronize()
        start = time.perf_counter()
        engine.verify(batch)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return 1000 * statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--out", default="verifier_speed.json")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    batches = {
        size: [(rng.integers(0, 256, (1, 512, 512, 3), dtype=np.uint8), f"prompt {i}") for i in range(size)]
        for size in BATCHES
    }
    card = torch.cuda.get_device_name()
    results = {}
    for graphs in (0, 8):
        start = time.perf_counter()
        engine = ClipEngine.load(VerifierConfig(models=MODELS, precision="fp16", device="cuda", cuda_graphs=graphs))
        load_s = time.perf_counter() - start
        results[graphs] = {
            "load_s": load_s,
            "p50_ms": {b: p50_ms(engine, batches[b], args.iterations) for b in BATCHES},
        }
        del engine
        torch.cuda.empty_cache()

    print(
        f"\ndual-CLIP verification (ViT-B-32 + ViT-L-14, fp16), 512x512 images; card: {card}; torch {torch.__version__}"
    )
    print(f"{'cuda_graphs':<12}{'load s':>8}" + "".join(f"{'batch ' + str(b) + ' ms':>13}" for b in BATCHES))
    for graphs, row in results.items():
        print(f"{graphs:<12}{row['load_s']:>8.1f}" + "".join(f"{row['p50_ms'][b]:>13.1f}" for b in BATCHES))
    with open(args.out, "w") as f:
        json.dump({"card": card, "torch": torch.__version__, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
