"""The verifier's CUDA graphs on a GPU: replayed encoders give the eager verdicts. Run: `pytest -m gpu -s tests/`."""

import numpy as np
import pytest

from conftest import free_cuda
from deployments.config import ACCEPT_ALL, VerifierConfig
from deployments.engines.clip import ClipEngine

pytestmark = pytest.mark.gpu

MODELS = [
    {"name": "ViT-B-32-quickgelu", "pretrained": None, "calibration": ACCEPT_ALL},
    {"name": "ViT-L-14-quickgelu", "pretrained": None, "calibration": ACCEPT_ALL},
]


def test_graphed_encoders_give_the_eager_scores_for_captured_and_uncaptured_batch_sizes():
    rng = np.random.default_rng(0)
    small = [(rng.integers(0, 256, (1, 512, 512, 3), dtype=np.uint8), "a red fox in the snow")]
    large = [(rng.integers(0, 256, (2, 512, 512, 3), dtype=np.uint8), f"prompt {i}") for i in range(3)]  # 6 images
    scores = {}
    for graphs in (0, 4):
        config = VerifierConfig(models=MODELS, precision="fp16", device="cuda", cuda_graphs=graphs)
        engine = ClipEngine.load(config)
        scores[graphs] = [v.scores for batch in (small, large) for request in engine.verify(batch) for v in request]
        if graphs:  # batches of 1-4 captured at load; 6 images run eagerly
            assert [len(clip.encode_image) for clip in engine.models] == [4, 4]
        del engine
        free_cuda()
    for eager, graphed in zip(scores[0], scores[4], strict=True):
        for name in eager:
            assert graphed[name] == pytest.approx(eager[name], abs=2e-3)
