"""The VRAM-aware policies, driven with Ray's own AutoscalingContext (no cluster needed)."""

import logging

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.autoscaling_policy import _apply_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from deployments.autoscaling import VortexAppPolicy, VramAwarePolicy, replicas_that_fit

NF4_GENERATOR = {"vram_gb": 16.0, "GPU": 0.25, "CPU": 1.0}  # four per 80 GB card
NOW = 10_000.0


def context(
    name: str = "FluxGenerator",
    *,
    requests: float,
    running: int = 1,
    target: int | None = None,
    held: dict[str, float] | None = NF4_GENERATOR,
    state: dict | None = None,
    now: float = NOW,
    **config,
) -> AutoscalingContext:
    deployment = DeploymentID(name=name, app_name="vortex")
    replicas = [ReplicaID(unique_id=f"r{i}", deployment_id=deployment) for i in range(running)]
    metrics = {f"resource_{k}": {replica: v for replica in replicas} for k, v in (held or {}).items()}
    autoscaling = AutoscalingConfig(**{"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 2, **config})
    return AutoscalingContext(
        deployment_id=deployment,
        deployment_name=name,
        app_name="vortex",
        current_num_replicas=running,
        target_num_replicas=running if target is None else target,
        running_replicas=replicas,
        total_num_requests=requests,
        total_queued_requests=0,
        aggregated_metrics=metrics,
        raw_metrics={},
        capacity_adjusted_min_replicas=autoscaling.min_replicas,
        capacity_adjusted_max_replicas=autoscaling.max_replicas,
        policy_state=state or {},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=now,
        config=autoscaling,
    )


def nodes(*free: dict[str, float]):
    return lambda: list(free)


ROOMY = nodes({"vram_gb": 640.0, "GPU": 8.0, "CPU": 64.0})


def test_replicas_that_fit_counts_node_by_node():
    assert replicas_that_fit(NF4_GENERATOR, [{"vram_gb": 40, "GPU": 1, "CPU": 8}]) == 2
    # 30 GiB free on each of two nodes: one replica each, not 60 // 16 = 3 across them.
    assert replicas_that_fit(NF4_GENERATOR, [{"vram_gb": 30, "GPU": 1, "CPU": 8}] * 2) == 2
    assert replicas_that_fit(NF4_GENERATOR, [{"vram_gb": 80, "GPU": 1, "CPU": 0.5}]) == 0


def test_a_load_spike_scales_up_to_queued_plus_running_per_replica():
    decision, _ = VramAwarePolicy(node_resources=ROOMY)(context(requests=7.0))
    assert decision == 4  # ceil(7 / 2)


def test_idle_scales_down_to_zero_where_configured():
    policy = VramAwarePolicy(node_resources=ROOMY)
    assert policy(context(requests=0.0, running=3, min_replicas=0))[0] == 0
    assert policy(context(requests=0.0, running=3, min_replicas=1))[0] == 1
    wrapped = _apply_autoscaling_config(VramAwarePolicy(node_resources=ROOMY))  # Serve's wrapper
    idle = context(requests=0.0, running=1, min_replicas=0, downscale_delay_s=0, downscale_to_zero_delay_s=0)
    assert wrapped(idle)[0] == 0
    assert wrapped(context(requests=0.0, running=3, min_replicas=1, downscale_delay_s=0))[0] == 1


def test_serve_still_applies_the_upscale_delay():
    wrapped = _apply_autoscaling_config(VramAwarePolicy(node_resources=ROOMY))
    assert wrapped(context(requests=6.0, upscale_delay_s=60))[0] == 1  # the first sighting only starts the clock
    assert wrapped(context(requests=6.0, upscale_delay_s=0))[0] == 3


def test_vram_pressure_adds_only_the_replicas_that_fit_and_says_so(caplog):
    policy = VramAwarePolicy(node_resources=nodes({"vram_gb": 20.0, "GPU": 1.0, "CPU": 8.0}))
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        decision, state = policy(context(requests=8.0))
    assert decision == 2  # wanted 4; 20 GiB free holds one more 16 GiB replica
    assert state["vram_guard"]["blocked"] == 2
    assert "VRAM guard: FluxGenerator wants 2 more replica(s)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        policy(context(requests=8.0, state=state))
    assert caplog.text == ""  # said once, not every 0.1 s


def test_replicas_already_starting_count_against_the_free_room():
    policy = VramAwarePolicy(node_resources=nodes({"vram_gb": 40.0, "GPU": 1.0, "CPU": 8.0}))
    decision, _ = policy(context(requests=12.0, running=1, target=2))
    assert decision == 3  # room for 2; one of them is already on its way


def test_an_impossible_placement_is_never_asked_for():
    policy = VramAwarePolicy(node_resources=nodes({"vram_gb": 4.0, "GPU": 1.0, "CPU": 8.0}))
    decision, state = policy(context(requests=9.0, running=2))
    assert decision == 2 and state["vram_guard"]["blocked"] == 3


def test_a_slow_starting_replica_is_not_cancelled():
    """It already holds its VRAM, so the nodes look full: that must not read as 'never placeable'."""
    policy = VramAwarePolicy(node_resources=nodes({"vram_gb": 4.0, "GPU": 0.5, "CPU": 8.0}))
    state = {}
    for tick in range(600):  # a minute of controller ticks while the second replica loads its model
        decision, state = policy(context(requests=4.0, running=1, target=2, state=state, now=NOW + tick / 10))
        assert decision == 2


def test_without_running_replicas_the_configured_resources_guard_the_first_ones():
    policy = VramAwarePolicy(replica_resources=NF4_GENERATOR, node_resources=nodes({"vram_gb": 10.0, "GPU": 1.0}))
    assert policy(context(requests=4.0, running=0, held=None))[0] == 0


def test_until_a_replica_reports_what_it_holds_none_is_added_blind(caplog):
    """Load queued while the first replica loads its model must not start replicas no GPU may have room for."""
    policy = VramAwarePolicy(node_resources=nodes({"vram_gb": 20.0, "GPU": 1.0, "CPU": 8.0}))
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        decision, state = policy(context(requests=8.0, running=0, target=1, held=None))
    assert decision == 1 and state["vram_guard"]["blocked"] == 3
    assert "no replica has reported what it holds yet" in caplog.text
    assert policy(context(requests=8.0, running=0, target=0, held=None))[0] == 1  # scaled to zero: one may start
    decision, state = policy(context(requests=8.0, running=1, state=state))  # it reported: 16 GiB each
    assert decision == 2
    # Remembered: while its one replica is replaced, the policy still sizes replicas (room for two; one starting).
    roomier = VramAwarePolicy(node_resources=nodes({"vram_gb": 40.0, "GPU": 1.0, "CPU": 8.0}))
    assert roomier(context(requests=8.0, running=0, target=1, held=None, state=state))[0] == 2
    assert state["vram_guard"]["need"] == NF4_GENERATOR


@pytest.mark.parametrize(("generator_load", "expected_verifiers"), [(2.0, 1), (8.0, 4), (16.0, 8)])
def test_the_app_policy_sizes_the_verifier_to_the_generator(generator_load, expected_verifiers):
    policy = VortexAppPolicy(verifier_per_generator=0.5, node_resources=ROOMY)
    generator = context("FluxGenerator", requests=generator_load, target_ongoing_requests=1, max_replicas=32)
    verifier = context("ClipVerifier", requests=0.5, held={"vram_gb": 2.0, "GPU": 0.1, "CPU": 1.0})
    decisions, states = policy({generator.deployment_id: generator, verifier.deployment_id: verifier})
    assert decisions[generator.deployment_id] == generator_load
    assert decisions[verifier.deployment_id] == expected_verifiers
    assert set(states) == {generator.deployment_id, verifier.deployment_id}


def test_the_app_policy_lets_a_busy_verifier_scale_on_its_own_load():
    policy = VortexAppPolicy(verifier_per_generator=0.25, node_resources=ROOMY)
    generator = context("FluxGenerator", requests=1.0)
    verifier = context("ClipVerifier", requests=12.0, held={"vram_gb": 2.0, "GPU": 0.1, "CPU": 1.0})
    decisions, _ = policy({generator.deployment_id: generator, verifier.deployment_id: verifier})
    assert decisions[verifier.deployment_id] == 6
