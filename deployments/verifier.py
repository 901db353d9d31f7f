"""ClipVerifier: the Ray Serve deployment around the dual-CLIP engine (a fractional GPU in GPU configs)."""

import numpy as np
from ray import serve

from deployments.engines.clip import ClipEngine, Verification, VerifierConfig
from deployments.observability import send_engine_logs_to_serve


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class ClipVerifier:
    def __init__(self, config: VerifierConfig) -> None:
        send_engine_logs_to_serve()
        self.engine = ClipEngine.load(config)

    def verify(self, images: np.ndarray, prompt: str) -> list[Verification]:
        return self.engine.verify(images, prompt)
