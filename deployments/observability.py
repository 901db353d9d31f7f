"""Logs and Prometheus metrics, through Ray's own logging and metrics systems.

Metrics (Ray exports them on each node's metrics endpoint, prefixed `ray_`):
  vortex_request_latency_seconds{status}        end-to-end latency of POST /v1/images/generations
  vortex_attempts_per_request                   generations needed by the slowest image of a request
  vortex_rejections_total{reason}               failed verifications: prompt_mismatch, distractor, content_policy
  vortex_withheld_total{concept}                images the content policy flagged
  vortex_generation_latency_seconds             one generator call (all its images)
  vortex_generator_batch_images                 images per generator call
  vortex_verification_latency_seconds           one verifier batch
  vortex_verifier_batch_requests                requests per verifier batch
  vortex_replica_vram_used_bytes{deployment}    NVML memory in use on the replica's GPUs
  vortex_autoscaler_replicas_blocked{deployment}  (deployments.autoscaling) replicas no node can place
"""

import logging
from dataclasses import dataclass
from functools import cache

from ray.util.metrics import Counter, Gauge, Histogram

LATENCY_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]
COUNT_BUCKETS = [1, 2, 3, 4, 6, 8, 12, 16, 32]


def send_engine_logs_to_serve() -> None:
    """Route the engines' INFO logs (load time, VRAM, truncation warnings) through Serve's replica logger.

    Serve only sets up `ray.serve`; other loggers stay at WARNING with no replica or request context.
    """
    engines = logging.getLogger("deployments.engines")
    engines.setLevel(logging.INFO)
    engines.propagate = False
    for handler in logging.getLogger("ray.serve").handlers:
        if handler not in engines.handlers:
            engines.addHandler(handler)


def request_id() -> str:
    """Serve's id for the request being handled: in its logs and the X-Request-ID response header."""
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id


@dataclass
class ServiceMetrics:
    request_latency: Histogram
    attempts: Histogram
    rejections: Counter
    withheld: Counter


@dataclass
class ReplicaMetrics:
    latency: Histogram
    batch: Histogram
    vram_used: Gauge


@cache
def service_metrics() -> ServiceMetrics:
    return ServiceMetrics(
        request_latency=Histogram(
            "vortex_request_latency_seconds", "End-to-end image request latency.", LATENCY_BUCKETS, ("status",)
        ),
        attempts=Histogram("vortex_attempts_per_request", "Generations per image slot, worst slot.", COUNT_BUCKETS),
        rejections=Counter("vortex_rejections_total", "Images that failed verification, by reason.", ("reason",)),
        withheld=Counter("vortex_withheld_total", "Images the content policy flagged, by concept.", ("concept",)),
    )


@cache
def generator_metrics() -> ReplicaMetrics:
    return ReplicaMetrics(
        latency=Histogram("vortex_generation_latency_seconds", "One generator call.", LATENCY_BUCKETS),
        batch=Histogram("vortex_generator_batch_images", "Images per generator call.", COUNT_BUCKETS),
        vram_used=_vram_gauge(),
    )


@cache
def verifier_metrics() -> ReplicaMetrics:
    return ReplicaMetrics(
        latency=Histogram("vortex_verification_latency_seconds", "One verifier batch.", LATENCY_BUCKETS),
        batch=Histogram("vortex_verifier_batch_requests", "Requests per verifier batch.", COUNT_BUCKETS),
        vram_used=_vram_gauge(),
    )


@cache
def _vram_gauge() -> Gauge:
    return Gauge("vortex_replica_vram_used_bytes", "NVML memory in use on the replica's GPUs.", ("deployment",))
