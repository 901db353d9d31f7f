"""VRAM-aware autoscaling policies, selected in YAML.

Ray's `num_gpus` is only a logical reservation and its default autoscaler counts requests alone: a
replica that no GPU has room for would wait "pending" forever. These policies run in the Serve
controller (about every 0.1 s per deployment) and decide the number of replicas like this:

1. Load. desired = ceil(total_num_requests / target_ongoing_requests), where total_num_requests is
   the running plus queued requests Serve averages over `look_back_period_s`, and
   `target_ongoing_requests` comes from the deployment's `autoscaling_config`.
2. VRAM guard. Each replica needs what the running ones hold (`vram_gb`, `GPU`, `CPU`: every Vortex
   replica reports it with its metrics, `held_resources`; `replica_resources` in `policy_kwargs`
   covers a deployment with none running; the policy remembers the last need it saw). Above the
   current target the policy adds only as many replicas as the nodes' free resources can place now,
   less those already starting, so no replica is left pending forever for memory that no node has.
   While it knows no need (the first replica is still loading, or has not reported yet) it adds
   none, except the first replica of a deployment scaled to zero. Replicas it holds back are logged
   as a warning in the controller log and counted by the gauge `vortex_autoscaler_replicas_blocked`.
   (A replica that is starting holds its resources already, so "no room" cannot tell a stuck replica
   from a slow start: the policy never cancels one. Serve's `min_replicas` is applied after the
   policy: keep it placeable.)
3. Proportional verifier (application policy): the verifier runs at least
   ceil(generator replicas x `verifier_per_generator`) replicas, since every generated image is
   verified, and more if its own load asks for them.

Serve then applies min/max replicas, upscale/downscale delays, scaling factors and scale-to-zero.

Deployment level, for one deployment:
    autoscaling_config: {policy: {policy_function: deployments.autoscaling:VramAwarePolicy}}
Application level, for the generator and verifier together (it wins over deployment policies):
    autoscaling_policy: {policy_function: deployments.autoscaling:VortexAppPolicy,
                         policy_kwargs: {verifier_per_generator: 0.5}}
"""

import logging
import math
from collections.abc import Callable

from ray.serve.config import AutoscalingContext

from deployments.observability import autoscaler_blocked_gauge
from deployments.vram import VRAM_RESOURCE

logger = logging.getLogger("ray.serve")

GUARDED_RESOURCES = (VRAM_RESOURCE, "GPU", "CPU")
RESOURCE_METRIC_PREFIX = "resource_"  # replicas report e.g. resource_vram_gb, resource_GPU
STATE_KEY = "vram_guard"

NodeResources = Callable[[], list[dict[str, float]]]


def held_resources() -> dict[str, float]:
    """What this replica holds of the guarded resources, as its `record_autoscaling_stats` reports them."""
    import ray

    held = ray.get_runtime_context().get_assigned_resources()
    return {RESOURCE_METRIC_PREFIX + name: float(held.get(name, 0.0)) for name in GUARDED_RESOURCES}


def free_resources_per_node() -> list[dict[str, float]]:
    """Each alive node's free resources, from the GCS (Ray has no public per-node call for this)."""
    from ray._private.state import available_resources_per_node

    return list(available_resources_per_node().values())


def replica_vram_summary(ctx: AutoscalingContext) -> str:
    """Per replica: NVML used/total of its GPUs and torch's reserved memory, as last reported."""
    metrics = ctx.aggregated_metrics or {}
    used, total = metrics.get("vram_used_gb", {}), metrics.get("vram_total_gb", {})
    reserved = metrics.get("torch_reserved_gb", {})
    return (
        "; ".join(
            f"{replica.unique_id} GPU {used[replica]:.1f}/{total.get(replica, 0.0):.1f} GiB, "
            f"torch reserved {reserved.get(replica, 0.0):.1f} GiB"
            for replica in ctx.running_replicas
            if replica in used
        )
        or "none yet"
    )


def replicas_that_fit(need: dict[str, float], nodes: list[dict[str, float]]) -> int:
    """How many more replicas needing `need` the nodes' free resources can place, node by node."""
    wanted = {name: amount for name, amount in need.items() if amount > 0}
    if not wanted:
        return math.inf
    return sum(min(int(node.get(name, 0.0) / amount + 1e-9) for name, amount in wanted.items()) for node in nodes)


class VramAwarePolicy:
    """Deployment-level policy: scale on load, never beyond what free VRAM (and GPUs) can place."""

    def __init__(
        self, replica_resources: dict[str, float] | None = None, node_resources: NodeResources | None = None
    ) -> None:
        self.replica_resources = replica_resources
        self.node_resources = node_resources or free_resources_per_node

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict]:
        return self.decide(ctx)

    def replica_need(self, ctx: AutoscalingContext) -> dict[str, float] | None:
        """Resources one replica holds, as running replicas report them; else `replica_resources`."""
        metrics = ctx.aggregated_metrics or {}
        reported = {
            name.removeprefix(RESOURCE_METRIC_PREFIX): max(per_replica.values())
            for name, per_replica in metrics.items()
            if name.startswith(RESOURCE_METRIC_PREFIX) and per_replica
        }
        need = {name: reported[name] for name in GUARDED_RESOURCES if name in reported}
        return need or self.replica_resources

    def decide(self, ctx: AutoscalingContext, minimum: int = 0) -> tuple[int, dict]:
        state = dict(ctx.policy_state.get(STATE_KEY, {}))
        target_load = (ctx.config.target_ongoing_requests if ctx.config else None) or 1.0
        desired = max(math.ceil(ctx.total_num_requests / target_load), minimum)
        desired = min(max(desired, ctx.capacity_adjusted_min_replicas), ctx.capacity_adjusted_max_replicas)
        target = ctx.target_num_replicas
        starting = max(0, target - ctx.current_num_replicas)
        need = self.replica_need(ctx) or state.get("need")
        if need:
            state["need"] = need
        decision = desired
        if desired > target:
            if need:
                room = replicas_that_fit(need, self.node_resources())
                decision = target + min(desired - target, max(0, room - starting))
            else:  # unknown: replicas added blind could wait forever for a GPU; a scaled-to-zero one may start
                decision = max(target, min(desired, 1))
        blocked = desired - decision  # 0 unless the guard held some back

        held_back_for = ("no room" if need else "unknown need") if blocked else None
        if blocked != state.get("blocked", 0) or held_back_for != state.get("held_back_for"):
            self._report_blocked(ctx, blocked, held_back_for, state.get("held_back_for"), need)
            state["blocked"], state["held_back_for"] = blocked, held_back_for
        if decision != target and decision != state.get("last_decision"):
            logger.info(
                "%s: %d -> %d replicas for %.1f ongoing requests; replicas' VRAM as reported: %s",
                ctx.deployment_name,
                target,
                decision,
                ctx.total_num_requests,
                replica_vram_summary(ctx),
            )
        state["last_decision"] = decision
        return decision, {STATE_KEY: state}

    def _report_blocked(
        self,
        ctx: AutoscalingContext,
        blocked: int,
        held_back_for: str | None,
        before: str | None,
        need: dict[str, float] | None,
    ) -> None:
        """Gauge on every change; a log line when holding back starts, changes reason or ends, not each 0.1 s tick."""
        if held_back_for == "unknown need" and before != held_back_for:
            logger.warning(
                "VRAM guard: %s wants %d more replica(s), but no replica has reported what it holds yet; none "
                "is added until one has (set policy_kwargs replica_resources to scale before that).",
                ctx.deployment_name,
                blocked,
            )
        elif held_back_for == "no room" and before != held_back_for:
            logger.warning(
                "VRAM guard: %s wants %d more replica(s) needing %s each; no node has them free, so they are "
                "not added. Add GPU nodes or lower the replica's VRAM need.",
                ctx.deployment_name,
                blocked,
                need,
            )
        elif not held_back_for and before:
            logger.info("VRAM guard: %s is no longer held back.", ctx.deployment_name)
        autoscaler_blocked_gauge().set(blocked, tags={"deployment": ctx.deployment_name})


class VortexAppPolicy:
    """Application-level policy: VRAM-aware scaling everywhere, the verifier sized to the generator."""

    GENERATOR = "FluxGenerator"
    VERIFIER = "ClipVerifier"

    def __init__(
        self,
        verifier_per_generator: float = 0.5,
        replica_resources: dict[str, dict[str, float]] | None = None,
        node_resources: NodeResources | None = None,
    ) -> None:
        self.verifier_per_generator = verifier_per_generator
        self.replica_resources = replica_resources or {}
        self.node_resources = node_resources
        self.policies: dict[str, VramAwarePolicy] = {}

    def _policy(self, deployment: str) -> VramAwarePolicy:
        if deployment not in self.policies:
            self.policies[deployment] = VramAwarePolicy(self.replica_resources.get(deployment), self.node_resources)
        return self.policies[deployment]

    def __call__(self, contexts: dict) -> tuple[dict, dict]:
        by_name = {ctx.deployment_name: deployment_id for deployment_id, ctx in contexts.items()}
        decisions, states = {}, {}
        generator_replicas = None
        if self.GENERATOR in by_name:
            deployment_id = by_name[self.GENERATOR]
            decisions[deployment_id], states[deployment_id] = self._policy(self.GENERATOR).decide(
                contexts[deployment_id]
            )
            generator_replicas = decisions[deployment_id]
        for name, deployment_id in by_name.items():
            if name == self.GENERATOR:
                continue
            minimum = 0
            if name == self.VERIFIER and generator_replicas is not None:
                minimum = math.ceil(generator_replicas * self.verifier_per_generator)
            decisions[deployment_id], states[deployment_id] = self._policy(name).decide(
                contexts[deployment_id], minimum
            )
        return decisions, states
