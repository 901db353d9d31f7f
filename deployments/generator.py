"""FluxGenerator: the Ray Serve deployment around the Flux engine. GPUs come from YAML `ray_actor_options`."""

from collections.abc import Sequence

import numpy as np
from ray import serve

from deployments.engines.flux import FluxConfig, FluxEngine, to_uint8_pixels
from deployments.observability import send_engine_logs_to_serve


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=2)
class FluxGenerator:
    def __init__(self, config: FluxConfig) -> None:
        send_engine_logs_to_serve()
        self.engine = FluxEngine.load(config)

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
        images = self.engine.generate(
            prompt, seeds=seeds, width=width, height=height, steps=steps, negative_prompt=negative_prompt
        )
        return to_uint8_pixels(images)
