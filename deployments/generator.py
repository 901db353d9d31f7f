"""FluxGenerator: the Ray Serve deployment around the Flux engine. GPUs come from YAML `ray_actor_options`.

Concurrent requests are batched (`@serve.batch`): those with the same size, steps and negative
prompt share one forward pass, each image with its own prompt and seed. A batch changes the GEMM
shapes, so a batched image can differ in its last bits from the same request served alone.
"""

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from deployments.autoscaling import replica_autoscaling_stats
from deployments.engines.flux import FluxConfig, FluxEngine, to_uint8_pixels
from deployments.observability import generator_metrics, send_engine_logs_to_serve
from deployments.vram import GB


class BatchingConfig(BaseModel):
    """The `batching:` block of the application args."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(4, ge=1, description="Requests per batch; 1 serves each request alone.")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="How long the first request waits for company.")


@dataclass
class GenerationJob:
    """One request's share of a batch: its images, one per seed."""

    prompt: str
    seeds: list[int]
    width: int
    height: int
    steps: int
    negative_prompt: str | None = None

    @property
    def key(self) -> tuple:
        """What jobs sharing one forward pass must have in common."""
        return (self.width, self.height, self.steps, self.negative_prompt)


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=8)
class FluxGenerator:
    def __init__(self, config: FluxConfig, batching: BatchingConfig | None = None) -> None:
        send_engine_logs_to_serve()
        batching = batching or BatchingConfig()
        # Compile and capture CUDA graphs for every batch size a batch of one-image requests can have.
        self.engine = FluxEngine.load(config, warmup_batch_sizes=range(1, batching.max_batch_size + 1))
        self._batched.set_max_batch_size(batching.max_batch_size)
        self._batched.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self.in_flight = 0  # requests in the batch being generated
        self.requests_per_batch: Counter[int] = Counter()
        self.metrics = generator_metrics()

    async def generate_stream(self, job: GenerationJob) -> AsyncIterator[dict | np.ndarray]:
        """{"stage": "queued"} while another group of the batch runs, {"step": i, "steps": n} after each
        denoising step, then uint8 pixels [len(seeds), height, width, 3].

        Call it with `handle.options(stream=True).generate_stream.remote(job)`.
        """
        # A plain async generator in front of the batched one: Serve 2.60 runs the sync wrapper that
        # @serve.batch puts around a streaming method in its thread pool, off the batch's event loop.
        # The pixels travel wrapped: the batcher tests each item with `in [StopIteration, ...]`.
        async for event in self._batched(job):
            yield event.get("pixels", event)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def _batched(self, jobs: list[GenerationJob]) -> AsyncIterator[list]:
        groups: dict[tuple, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.key, []).append(index)
        finished: set[int] = set()
        self.in_flight = len(jobs)
        self.requests_per_batch[len(jobs)] += 1
        try:
            for members in groups.values():
                events: asyncio.Queue = asyncio.Queue()
                run = asyncio.create_task(self._run_group([jobs[i] for i in members], events))
                while not (run.done() and events.empty()):
                    getter = asyncio.ensure_future(events.get())
                    await asyncio.wait({getter, run}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        continue
                    step = getter.result()
                    yield [step if i in members else self._idle(i, finished) for i in range(len(jobs))]
                pixels = dict(zip(members, run.result(), strict=True))
                yield [{"pixels": pixels[i]} if i in pixels else self._idle(i, finished) for i in range(len(jobs))]
                finished.update(members)
        finally:
            self.in_flight = 0

    @staticmethod
    def _idle(index: int, finished: set[int]):
        return StopIteration if index in finished else {"stage": "queued"}

    async def _run_group(self, jobs: list[GenerationJob], events: asyncio.Queue) -> list[np.ndarray]:
        """One forward pass for compatible jobs; returns each job's pixels."""
        loop = asyncio.get_running_loop()
        first = jobs[0]
        prompts = [job.prompt for job in jobs for _ in job.seeds]
        seeds = [seed for job in jobs for seed in job.seeds]
        start = time.perf_counter()
        try:
            images = await asyncio.to_thread(
                self.engine.generate,
                prompts,
                seeds=seeds,
                width=first.width,
                height=first.height,
                steps=first.steps,
                negative_prompt=first.negative_prompt,
                on_step=lambda step, steps: loop.call_soon_threadsafe(
                    events.put_nowait, {"step": step, "steps": steps}
                ),
            )
        finally:
            self.metrics.latency.observe(time.perf_counter() - start)
            self.metrics.batch.observe(len(seeds))
            vram_used = replica_autoscaling_stats(self.in_flight)["vram_used_gb"] * GB
            self.metrics.vram_used.set(vram_used, tags={"deployment": "FluxGenerator"})
        pixels = to_uint8_pixels(images)
        bounds = np.cumsum([0] + [len(job.seeds) for job in jobs])
        return [pixels[a:b] for a, b in itertools.pairwise(bounds)]

    def batch_histogram(self) -> dict[int, int]:
        """How many batches held each number of requests, since the replica started."""
        return dict(self.requests_per_batch)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """VRAM, held resources and queue for `deployments.autoscaling` (only with autoscaling_config)."""
        return replica_autoscaling_stats(self.in_flight)
