"""Logs and Prometheus metrics, through Ray's own logging and metrics systems.

Metrics (Ray exports them on each node's metrics endpoint, prefixed `ray_`):
  vortex_request_latency_seconds{status}           end-to-end latency of an image request (HTTP or handle)
  vortex_attempts_per_request                      generations needed by the slowest image of a request
  vortex_rejections_total{reason}                  failed verifications: prompt_mismatch, distractor, content_policy
  vortex_withheld_total{concept}                   images the content policy flagged
  vortex_batch_latency_seconds{deployment}         one batch: a generator forward pass, or a verifier batch
  vortex_batch_images{deployment}                  images per batch
  vortex_replica_vram_used_bytes{deployment}       NVML memory in use on the replica's GPUs, after each batch
  vortex_autoscaler_replicas_blocked{deployment}   (deployments.autoscaling) replicas no node can place
  vortex_user_config_refused{deployment}           1 while the replica runs on older settings than deployed
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
    batch_latency: Histogram
    batch_images: Histogram
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
def replica_metrics() -> ReplicaMetrics:
    return ReplicaMetrics(
        batch_latency=Histogram(
            "vortex_batch_latency_seconds", "One batch of a GPU deployment.", LATENCY_BUCKETS, ("deployment",)
        ),
        batch_images=Histogram("vortex_batch_images", "Images per batch.", COUNT_BUCKETS, ("deployment",)),
        vram_used=Gauge("vortex_replica_vram_used_bytes", "NVML memory in use on the replica's GPUs.", ("deployment",)),
    )


@cache
def user_config_refused_gauge() -> Gauge:
    return Gauge(
        "vortex_user_config_refused",
        description="1 while a replica keeps its last good settings because the deployed user_config was invalid.",
        tag_keys=("deployment",),
    )


@cache
def autoscaler_blocked_gauge() -> Gauge:
    return Gauge(
        "vortex_autoscaler_replicas_blocked",
        description="Replicas the load asks for but no node has the VRAM/GPU to place.",
        tag_keys=("deployment",),
    )
