"""FluxGenerator: the Ray Serve deployment around the Flux engine. GPUs come from YAML `ray_actor_options`."""

from collections.abc import Sequence

import numpy as np
from ray import serve

from deployments.autoscaling import replica_autoscaling_stats
from deployments.engines.flux import FluxConfig, FluxEngine, to_uint8_pixels
from deployments.observability import send_engine_logs_to_serve


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=2)
class FluxGenerator:
    def __init__(self, config: FluxConfig) -> None:
        send_engine_logs_to_serve()
        self.engine = FluxEngine.load(config)
        self.in_flight = 0  # calls inside generate: running or waiting for the engine

    def generate(
        self,
        prompt: str,
        *,
        seeds: Sequence[int],
        width: int,
        height: int,
        steps: int,
        negative_prompt: str | None = None,
    ) -> np.ndarray:
        """uint8 pixels shaped [len(seeds), height, width, 3]."""
        self.in_flight += 1
        try:
            images = self.engine.generate(
                prompt, seeds=seeds, width=width, height=height, steps=steps, negative_prompt=negative_prompt
            )
            return to_uint8_pixels(images)
        finally:
            self.in_flight -= 1

    def record_autoscaling_stats(self) -> dict[str, float]:
        """VRAM, held resources and queue for `deployments.autoscaling` (only with autoscaling_config)."""
        return replica_autoscaling_stats(self.in_flight)
