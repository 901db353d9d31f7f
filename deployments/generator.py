"""FluxGenerator: the Ray Serve deployment around the Flux engine. GPUs come from YAML `ray_actor_options`."""

import time
from collections.abc import Sequence

import numpy as np
from ray import serve

from deployments.autoscaling import replica_autoscaling_stats
from deployments.engines.flux import FluxConfig, FluxEngine, to_uint8_pixels
from deployments.observability import generator_metrics, send_engine_logs_to_serve
from deployments.vram import GB


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=2)
class FluxGenerator:
    def __init__(self, config: FluxConfig) -> None:
        send_engine_logs_to_serve()
        self.engine = FluxEngine.load(config)
        self.in_flight = 0  # calls inside generate: running or waiting for the engine
        self.metrics = generator_metrics()

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
        start = time.perf_counter()
        try:
            images = self.engine.generate(
                prompt, seeds=seeds, width=width, height=height, steps=steps, negative_prompt=negative_prompt
            )
            return to_uint8_pixels(images)
        finally:
            self.in_flight -= 1
            self.metrics.latency.observe(time.perf_counter() - start)
            self.metrics.batch.observe(len(seeds))
            vram_used = replica_autoscaling_stats(self.in_flight)["vram_used_gb"] * GB
            self.metrics.vram_used.set(vram_used, tags={"deployment": "FluxGenerator"})

    def record_autoscaling_stats(self) -> dict[str, float]:
        """VRAM, held resources and queue for `deployments.autoscaling` (only with autoscaling_config)."""
        return replica_autoscaling_stats(self.in_flight)
