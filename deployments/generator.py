"""FluxGenerator: the Ray Serve deployment around the Flux engine. GPUs come from YAML `ray_actor_options`."""

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence

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
        on_step: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """uint8 pixels shaped [len(seeds), height, width, 3]."""
        self.in_flight += 1
        start = time.perf_counter()
        try:
            images = self.engine.generate(
                prompt,
                seeds=seeds,
                width=width,
                height=height,
                steps=steps,
                negative_prompt=negative_prompt,
                on_step=on_step,
            )
            return to_uint8_pixels(images)
        finally:
            self.in_flight -= 1
            self.metrics.latency.observe(time.perf_counter() - start)
            self.metrics.batch.observe(len(seeds))
            vram_used = replica_autoscaling_stats(self.in_flight)["vram_used_gb"] * GB
            self.metrics.vram_used.set(vram_used, tags={"deployment": "FluxGenerator"})

    def generate_stream(self, prompt: str, **kwargs) -> Iterator[dict | np.ndarray]:
        """Like `generate`, streamed: {"step": i, "steps": n} after each denoising step, then the pixels.

        Call it with `handle.generate_stream.options(stream=True)`.
        """
        events: queue.Queue = queue.Queue()

        def run() -> None:
            try:
                pixels = self.generate(prompt, **kwargs, on_step=lambda step, steps: events.put((step, steps)))
                events.put(pixels)
            except BaseException as error:  # handed to the caller below
                events.put(error)

        threading.Thread(target=run, daemon=True).start()
        while True:
            event = events.get()
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, np.ndarray):
                yield event
                return
            yield {"step": event[0], "steps": event[1]}

    def record_autoscaling_stats(self) -> dict[str, float]:
        """VRAM, held resources and queue for `deployments.autoscaling` (only with autoscaling_config)."""
        return replica_autoscaling_stats(self.in_flight)
