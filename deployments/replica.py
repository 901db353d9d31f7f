"""What both GPU deployments record and report, written once: in-flight requests, batch sizes, latency
and VRAM (Prometheus), the metrics the VRAM-aware autoscaler reads, and Serve's health check.
"""

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray import serve

from deployments.autoscaling import held_resources
from deployments.observability import replica_metrics, send_engine_logs_to_serve
from deployments.vram import gpu_memory, replica_vram_stats


class BatchingReplica:
    """Base of the generator and verifier deployments, whose `engine` runs the model: wrap each batch in
    `with self.recording_batch(...)`.

    Serve calls `record_autoscaling_stats` (when the deployment has an `autoscaling_config`); tests and
    benchmarks call `batch_histogram` through a handle.
    """

    def __init__(self) -> None:
        send_engine_logs_to_serve()
        self.deployment = serve.get_replica_context().deployment
        # Ray's ids (indices or UUIDs) of the replica's GPUs: NVML ignores CUDA_VISIBLE_DEVICES.
        self.gpu_ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        self.metrics = replica_metrics()
        self.in_flight = 0  # requests in the batch being run
        self.requests_per_batch: Counter[int] = Counter()

    @contextmanager
    def recording_batch(self, requests: int, images: int) -> Iterator[None]:
        tags = {"deployment": self.deployment}
        self.in_flight = requests
        self.requests_per_batch[requests] += 1
        self.metrics.batch_images.observe(images, tags=tags)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.in_flight = 0
            self.metrics.batch_latency.observe(time.perf_counter() - start, tags=tags)
            self.metrics.vram_used.set(gpu_memory(self.gpu_ids)[0], tags=tags)

    async def check_health(self) -> None:
        """Serve calls this every `health_check_period_s` and replaces the replica when it raises: after a
        sticky CUDA error the engine cannot run again."""
        await asyncio.to_thread(self.engine.check_health)

    def batch_histogram(self) -> dict[int, int]:
        """How many batches held each number of requests, since the replica started."""
        return dict(self.requests_per_batch)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """VRAM, held resources and queue for `deployments.autoscaling` (only with autoscaling_config)."""
        return {**replica_vram_stats(self.gpu_ids), **held_resources(), "queue_length": float(self.in_flight)}
