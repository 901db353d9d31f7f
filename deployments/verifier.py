"""ClipVerifier: the Ray Serve deployment around the dual-CLIP engine (a fractional GPU in GPU configs).

Concurrent verification requests are batched into one forward pass per CLIP model (`@serve.batch`).
"""

import asyncio
import logging

import numpy as np
from ray import serve

from deployments.api import Verification
from deployments.config import BatchLimits, VerifierConfig, VerifierUpdate
from deployments.observability import user_config_refused_gauge
from deployments.replica import BatchingReplica

logger = logging.getLogger("ray.serve")


# A replica stopped by a redeploy or a scale-down first verifies what it holds (a batch takes milliseconds on a GPU).
@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32, graceful_shutdown_timeout_s=60)
class ClipVerifier(BatchingReplica):
    def __init__(self, config: VerifierConfig, batching: BatchLimits) -> None:
        # The engine (torch, open_clip) is imported here, in the replica: building the application does not load it.
        from deployments.engines.heap import freeze_startup_heap, imports_without_collections

        with imports_without_collections():
            from deployments.engines.clip import ClipEngine

        super().__init__()
        self.base_config = config
        self.engine = ClipEngine.load(config)
        freeze_startup_heap()
        self.verify.set_max_batch_size(batching.max_batch_size)
        self.verify.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    @serve.batch(max_batch_size=16)
    async def verify(
        self, images: list[np.ndarray], prompts: list[str], include_embeddings: list[bool]
    ) -> list[list[Verification]]:
        """One call per request (uint8 images [N, H, W, 3], prompt, include_embeddings); Serve batches them."""
        with self.recording_batch(requests=len(images), images=sum(len(request) for request in images)):
            verdicts = await asyncio.to_thread(
                self.engine.verify, list(zip(images, prompts, strict=True)), any(include_embeddings)
            )
        for request_verdicts, wanted in zip(verdicts, include_embeddings, strict=True):
            for verdict in request_verdicts:
                verdict.embeddings = verdict.embeddings if wanted else None
        return verdicts

    def reconfigure(self, user_config: dict) -> None:
        """Apply the YAML `user_config` (a `VerifierUpdate`) in place, without reloading the models.

        An invalid one is refused, and the replica keeps verifying with its last good settings: raising
        here would fail the deployment and leave no replica to verify anything (Ray 2.60). The refusal
        is logged and `vortex_user_config_refused` is 1 until a good one arrives;
        `python -m deployments.check` catches it before `serve deploy`.
        """
        try:
            config = VerifierUpdate.model_validate(user_config).apply_to(self.base_config)
        except ValueError as error:  # pydantic's ValidationError included
            logger.error("user_config refused; verifying with the last good settings: %s", error)
            user_config_refused_gauge().set(1, tags={"deployment": self.deployment})
            return
        self.engine.reconfigure(config)
        user_config_refused_gauge().set(0, tags={"deployment": self.deployment})
