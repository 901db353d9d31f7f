"""FluxGenerator: the Ray Serve deployment around the Flux engine. GPUs come from YAML `ray_actor_options`.

Concurrent requests are batched: those with the same size, steps and negative prompt share one
forward pass of up to `max_batch_size` images, each image with its own prompt and seed. Every size
the service offers is compiled and captured at every batch size before the replica serves; a request
for more images than a batch holds is served alone, its transformer passes in parts of the batch
size (`engines/flux.py`, `TransformerInParts`). A batch changes the GEMM shapes, so a batched image
can differ in its last bits from the same request served alone.

The batch is formed when the engine becomes free, from every request waiting by then. Serve's
`@serve.batch` (2.60) forms the next batch as soon as the running one starts, from whatever arrived
within `batch_wait_timeout_s`, and queues it behind the running one: under steady load on an H100
its batches held 2.3 requests on average while requests waited 2 s in the replica.
"""

import asyncio
import contextvars
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from ray import serve

from deployments.api import GenerationJob
from deployments.config import BatchLimits, FluxConfig
from deployments.replica import BatchingReplica

logger = logging.getLogger("ray.serve")


@dataclass
class _Waiting:
    """A job waiting for the engine, and where its events go."""

    job: GenerationJob
    events: asyncio.Queue
    cancelled: bool = False


_DONE = object()  # the last item of a job's event queue


# A replica stopped by a redeploy or a scale-down first generates what it holds (at most its
# max_ongoing_requests; the callers give up after serving.request_timeout_s, default 120 s).
@serve.deployment(
    ray_actor_options={"num_cpus": 1}, max_ongoing_requests=8, max_queued_requests=16, graceful_shutdown_timeout_s=120
)
class FluxGenerator(BatchingReplica):
    def __init__(self, config: FluxConfig, batching: BatchLimits, sizes: list[tuple[int, int]]) -> None:
        # The engine (torch, diffusers) is imported here, in the replica: building the application does not load it.
        from deployments.engines.heap import freeze_startup_heap, imports_without_collections

        start = time.perf_counter()
        with imports_without_collections():
            from deployments.engines.preload import start_reading, use_compile_cache_dir  # torch and safetensors

            use_compile_cache_dir(config)  # before the process's first CUDA call
            # An fp8 engine's transformer blocks and T5 go to the GPU while diffusers and transformers import.
            early_weights = start_reading(config)
            from deployments.engines.flux import FluxEngine
        logger.info("Imported the engine (torch, diffusers, transformers) in %.1f s", time.perf_counter() - start)

        super().__init__()
        self.batching = batching
        # Compile and capture every (width, height) the service offers at every number of images a batch can hold.
        self.engine = FluxEngine.load(
            config,
            warmup_sizes=sizes,
            warmup_batch_sizes=range(1, batching.max_batch_size + 1),
            early_weights=early_weights,
        )
        freeze_startup_heap()
        self.waiting: asyncio.Queue[_Waiting] = asyncio.Queue()
        self.held_over: _Waiting | None = None  # taken from the queue, but its images did not fit the last batch
        self.batcher: asyncio.Task | None = None

    async def generate_stream(self, job: GenerationJob) -> AsyncIterator[dict | np.ndarray]:
        """{"text_tokens": t} (the prompt's, as T5 reads it) when the job's group starts, {"stage": "queued"}
        while another group of the batch runs, {"step": i, "steps": n} after each denoising step,
        {"preview_step": i, "previews": uint8 [len(seeds), height / 8, width / 8, 3]} after each of
        `job.preview_steps`, then uint8 pixels [len(seeds), height, width, 3].

        Call it with `handle.options(stream=True).generate_stream.remote(job)`.
        """
        waiting = _Waiting(job, asyncio.Queue())
        self.waiting.put_nowait(waiting)
        if self.batcher is None or self.batcher.done():  # started here: it needs the replica's event loop
            self.batcher = asyncio.create_task(self._serve_batches(), context=contextvars.Context())
        try:
            while (event := await waiting.events.get()) is not _DONE:
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            waiting.cancelled = True  # a caller that left (timeout, disconnect) is not generated for

    async def _serve_batches(self) -> None:
        """One batch at a time, each taking the requests waiting when it starts, in order, while their images
        fit in `max_batch_size`."""
        while True:
            first, self.held_over = self.held_over or await self.waiting.get(), None
            if self.waiting.empty():
                await asyncio.sleep(self.batching.batch_wait_timeout_s)  # a moment for concurrent arrivals
            batch, images = [first], len(first.job.seeds)
            while not self.waiting.empty():
                waiting = self.waiting.get_nowait()
                if images + len(waiting.job.seeds) > self.batching.max_batch_size:
                    self.held_over = waiting  # first in the next batch
                    break
                batch.append(waiting)
                images += len(waiting.job.seeds)
            batch = [waiting for waiting in batch if not waiting.cancelled]
            if not batch:
                continue
            try:
                await self._run_batch(batch)
            except Exception as error:  # a bug here must not leave callers waiting forever
                for waiting in batch:
                    waiting.events.put_nowait(error)

    async def _run_batch(self, batch: list[_Waiting]) -> None:
        """Groups of compatible jobs one after another; jobs in later groups hear that they are queued."""
        by_key: dict[tuple, list[_Waiting]] = {}
        for waiting in batch:
            by_key.setdefault(waiting.job.key, []).append(waiting)
        groups = list(by_key.values())
        for index, members in enumerate(groups):
            for later in itertools.chain.from_iterable(groups[index + 1 :]):
                later.events.put_nowait({"stage": "queued"})
            try:
                pixels = await self._run_group(members)
            except Exception as error:  # each caller gets the error (OOM, bad input), the replica goes on
                for waiting in members:
                    waiting.events.put_nowait(error)
                continue
            for waiting, images in zip(members, pixels, strict=True):
                waiting.events.put_nowait(images)
                waiting.events.put_nowait(_DONE)

    async def _run_group(self, members: list[_Waiting]) -> list[np.ndarray]:
        """One forward pass for compatible jobs; step events go to every member; returns each job's pixels."""
        from deployments.engines.flux import to_uint8_pixels

        loop = asyncio.get_running_loop()
        jobs = [waiting.job for waiting in members]
        first = jobs[0]
        prompts = [job.prompt for job in jobs for _ in job.seeds]
        seeds = [seed for job in jobs for seed in job.seeds]
        bounds = np.cumsum([0] + [len(job.seeds) for job in jobs])
        for waiting in members:
            waiting.events.put_nowait({"text_tokens": self.engine.text_tokens(waiting.job.prompt)})

        def send_previews(step: int, previews: np.ndarray) -> None:  # on the engine's thread
            for waiting, (a, b) in zip(members, itertools.pairwise(bounds), strict=True):
                if step in waiting.job.preview_steps:
                    event = {"preview_step": step, "previews": previews[a:b]}
                    loop.call_soon_threadsafe(waiting.events.put_nowait, event)

        with self.recording_batch(requests=len(jobs), images=len(seeds)):
            images = await asyncio.to_thread(
                self.engine.generate,
                prompts,
                seeds=seeds,
                width=first.width,
                height=first.height,
                steps=first.steps,
                negative_prompt=first.negative_prompt,
                on_step=lambda step, steps: loop.call_soon_threadsafe(_send, members, {"step": step, "steps": steps}),
                preview_steps=set().union(*(job.preview_steps for job in jobs)),
                on_preview=send_previews,
            )
            # The device-to-host copy waits for the GPU: off the event loop, which streams other callers' events.
            pixels = await asyncio.to_thread(to_uint8_pixels, images)
        return [pixels[a:b] for a, b in itertools.pairwise(bounds)]


def _send(members: list[_Waiting], event: dict) -> None:
    for waiting in members:
        waiting.events.put_nowait(event)
