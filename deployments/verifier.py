"""ClipVerifier: the Ray Serve deployment around the dual-CLIP engine (a fractional GPU in GPU configs).

Concurrent verification requests are batched into one forward pass per CLIP model (`@serve.batch`).
"""

import asyncio
import time
from collections import Counter

import numpy as np
from ray import serve

from deployments.autoscaling import replica_autoscaling_stats
from deployments.engines.clip import ClipEngine, Verification, VerifierConfig
from deployments.observability import send_engine_logs_to_serve, verifier_metrics


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class ClipVerifier:
    def __init__(self, config: VerifierConfig) -> None:
        send_engine_logs_to_serve()
        self.base_config = config
        self.engine = ClipEngine.load(config)
        self.verify.set_max_batch_size(config.max_batch_size)
        self.verify.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.requests_per_batch: Counter[int] = Counter()
        self.in_flight = 0  # requests in the batch being verified
        self.metrics = verifier_metrics()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def verify(
        self, images: list[np.ndarray], prompts: list[str], include_embeddings: list[bool]
    ) -> list[list[Verification]]:
        """One call per request (uint8 images [N, H, W, 3], prompt, include_embeddings); Serve batches them."""
        self.requests_per_batch[len(images)] += 1
        self.metrics.batch.observe(len(images))
        self.in_flight = len(images)
        start = time.perf_counter()
        try:
            verdicts = await asyncio.to_thread(
                self.engine.verify, list(zip(images, prompts, strict=True)), any(include_embeddings)
            )
        finally:
            self.in_flight = 0
            self.metrics.latency.observe(time.perf_counter() - start)
        for request_verdicts, wanted in zip(verdicts, include_embeddings, strict=True):
            for verdict in request_verdicts:
                verdict.embeddings = verdict.embeddings if wanted else None
        return verdicts

    def reconfigure(self, user_config: dict) -> None:
        """Apply the YAML `user_config` in place, without reloading the models.

        Keys: `min_ensemble_score`, `distractors`, `policy` (as under `verifier:`), and `calibration`:
        {model name: calibration block}, e.g. what `python -m deployments.calibrate` measured.
        """
        decision_keys = {"min_ensemble_score", "distractors", "policy"}
        if unknown := set(user_config) - decision_keys - {"calibration"}:
            raise ValueError(f"user_config: unknown keys {', '.join(sorted(unknown))}")
        settings = self.base_config.model_dump()
        settings.update({key: value for key, value in user_config.items() if key in decision_keys})
        calibrations = user_config.get("calibration", {})
        if unknown := set(calibrations) - {model["name"] for model in settings["models"]}:
            raise ValueError(f"calibration: no such verifier model: {', '.join(sorted(unknown))}")
        for model in settings["models"]:
            model["calibration"] = calibrations.get(model["name"], model["calibration"])
        self.engine.reconfigure(VerifierConfig.model_validate(settings))

    def record_autoscaling_stats(self) -> dict[str, float]:
        """VRAM, held resources and queue for `deployments.autoscaling` (only with autoscaling_config)."""
        return replica_autoscaling_stats(self.in_flight)

    def batch_histogram(self) -> dict[int, int]:
        """How many batches held each number of requests, since the replica started."""
        return dict(self.requests_per_batch)
