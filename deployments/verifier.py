"""ClipVerifier: the Ray Serve deployment around the dual-CLIP engine (a fractional GPU in GPU configs).

Concurrent verification requests are batched into one forward pass per CLIP model (`@serve.batch`).
"""

import asyncio
from collections import Counter

import numpy as np
from ray import serve

from deployments.engines.clip import ClipEngine, Verification, VerifierConfig
from deployments.observability import send_engine_logs_to_serve


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class ClipVerifier:
    def __init__(self, config: VerifierConfig) -> None:
        send_engine_logs_to_serve()
        self.engine = ClipEngine.load(config)
        self.verify.set_max_batch_size(config.max_batch_size)
        self.verify.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.requests_per_batch: Counter[int] = Counter()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def verify(
        self, images: list[np.ndarray], prompts: list[str], include_embeddings: list[bool]
    ) -> list[list[Verification]]:
        """One call per request (uint8 images [N, H, W, 3], prompt, include_embeddings); Serve batches them."""
        self.requests_per_batch[len(images)] += 1
        verdicts = await asyncio.to_thread(
            self.engine.verify, list(zip(images, prompts, strict=True)), any(include_embeddings)
        )
        for request_verdicts, wanted in zip(verdicts, include_embeddings, strict=True):
            for verdict in request_verdicts:
                verdict.embeddings = verdict.embeddings if wanted else None
        return verdicts

    def batch_histogram(self) -> dict[int, int]:
        """How many batches held each number of requests, since the replica started."""
        return dict(self.requests_per_batch)
