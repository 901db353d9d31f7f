"""Serve configs: valid for Ray's own schema, free of keys Ray would silently ignore, buildable without weights."""

import subprocess
import sys

import pytest
import yaml
from ray.serve._private.build_app import build_app as build_deployments

from conftest import CONFIGS, REPO, deployment_entry, load_yaml
from deployments.app import build_app
from deployments.check import config_problems, placement_problems
from deployments.config import AppArgs, FluxConfig


@pytest.mark.parametrize("path", CONFIGS)
def test_every_profile_passes_the_preflight_check(path):
    assert config_problems(load_yaml(path)) == []


def test_the_preflight_check_names_what_would_fail_after_serve_deploy(tmp_path):
    config = load_yaml("configs/local.yaml")
    app = config["applications"][0]
    deployment_entry(app, "ClipVerifier")["user_config"] = {"calibraton": {}}
    deployment_entry(app, "FluxGenerator")["ray_actor_options"] = {"num_cpu": 1}
    deployment_entry(app, "Ingress")["max_queued_requests"] = 10
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "deployments.check", str(path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}: applications[vortex].deployments[ClipVerifier].user_config.calibraton: "
        "Extra inputs are not permitted",
        f"{path}: applications[vortex].deployments[FluxGenerator].ray_actor_options.num_cpu: "
        "Ray does not know this key and would ignore it",
        f"{path}: applications[vortex].deployments[Ingress].max_queued_requests: Ray's proxy would refuse "
        "requests in plain text; limit them with args.serving.max_concurrent_requests, which answers JSON",
    ]


def test_the_preflight_check_refuses_replicas_no_node_can_place():
    config = load_yaml("configs/gpu-80gb.yaml")  # a generator asks for 0.45 GPU and 37 vram_gb
    assert placement_problems(config, [{"CPU": 16.0, "GPU": 1.0, "vram_gb": 78.0}]) == []
    problems = placement_problems(config, [{"CPU": 16.0, "GPU": 1.0, "vram_gb": 30.0}])
    assert len(problems) == 1 and "deployments[FluxGenerator]: no node of the cluster can place" in problems[0]


@pytest.mark.parametrize("path", CONFIGS)
def test_config_builds_the_three_deployment_graph_without_loading_weights(path):
    app_config = load_yaml(path)["applications"][0]
    args = AppArgs.model_validate(app_config["args"])
    built = build_deployments(build_app(args), name=app_config["name"])
    names = {deployment.name for deployment in built.deployments}
    assert names == {"Ingress", "FluxGenerator", "ClipVerifier"}
    assert built.ingress_deployment_name == "Ingress"
    assert {deployment["name"] for deployment in app_config.get("deployments", [])} <= names


def test_production_config_serves_flux_schnell_nf4_on_gpus():
    app_config = load_yaml("serve_config.yaml")["applications"][0]
    args = AppArgs.model_validate(app_config["args"])
    assert args.flux.model == "black-forest-labs/FLUX.1-schnell"
    assert args.flux.precision == "nf4"
    assert args.flux.random_weights is None
    assert [(m.name, m.pretrained) for m in args.verifier.models] == [
        ("ViT-B-32-quickgelu", "openai"),
        ("ViT-L-14-quickgelu", "openai"),
    ]
    options = {d["name"]: d for d in app_config.get("deployments", [])}
    assert options["FluxGenerator"]["ray_actor_options"]["num_gpus"] >= 1
    assert 0 < options["ClipVerifier"]["ray_actor_options"]["num_gpus"] < 1
    assert "autoscaling_config" in options["FluxGenerator"] or "num_replicas" in options["FluxGenerator"]


def test_args_with_a_typo_are_refused():
    with pytest.raises(ValueError, match="precison"):
        FluxConfig.model_validate({"precison": "nf4"})


def test_sizes_the_generator_would_refuse_are_caught_at_deploy_time():
    args = load_yaml("configs/local.yaml")["applications"][0]["args"]
    args["limits"]["sizes"] = ["512x512", "4096x4096"]
    with pytest.raises(ValueError, match=r"limits.sizes: 4096x4096"):
        AppArgs.model_validate(args)


GPU_CONFIGS = ["serve_config.yaml", "configs/gpu-12gb.yaml", "configs/gpu-80gb.yaml", "configs/cluster.yaml"]


def deployment_options(path: str) -> dict[str, dict]:
    return {d["name"]: d for d in load_yaml(path)["applications"][0].get("deployments", [])}


@pytest.mark.parametrize("path", GPU_CONFIGS)
def test_every_gpu_deployment_asks_for_vram(path):
    for name, options in deployment_options(path).items():
        actor = options.get("ray_actor_options", {})
        if actor.get("num_gpus", 0) > 0:
            assert actor.get("resources", {}).get("vram_gb", 0) > 0, name


@pytest.mark.parametrize(
    ("path", "card_vram_gb", "generators"),
    [("configs/gpu-12gb.yaml", 11, 1), ("configs/gpu-80gb.yaml", 78, 2)],  # what `deployments.vram` advertises
)
def test_single_gpu_profiles_pack_their_card(path, card_vram_gb, generators):
    options = deployment_options(path)

    def vram(name: str) -> float:
        return options[name]["ray_actor_options"]["resources"]["vram_gb"]

    def gpus(name: str) -> float:
        return options[name]["ray_actor_options"]["num_gpus"]

    generator = options["FluxGenerator"]
    most = generator.get("autoscaling_config", {}).get("max_replicas", generator.get("num_replicas", 1))
    assert most == generators
    assert generators * vram("FluxGenerator") + vram("ClipVerifier") <= card_vram_gb
    assert (generators + 1) * vram("FluxGenerator") + vram("ClipVerifier") > card_vram_gb  # one more would not fit
    assert generators * gpus("FluxGenerator") + gpus("ClipVerifier") <= 1


def test_the_verifiers_user_config_updates_decisions_and_refuses_typos():
    from deployments.config import VerifierConfig, VerifierUpdate

    base = VerifierConfig()
    measured = {"threshold": 0.235, "matched_mean": 0.318, "mismatched_mean": 0.152, "pairs": 400}
    updated = VerifierUpdate.model_validate(
        {"calibration": {"ViT-B-32-quickgelu": measured}, "min_ensemble_score": 0.2}
    ).apply_to(base)
    assert updated.models[0].calibration.pairs == 400 and updated.models[1] == base.models[1]
    assert (updated.min_ensemble_score, updated.distractors, updated.policy) == (0.2, base.distractors, base.policy)
    with pytest.raises(ValueError, match="calibraton"):
        VerifierUpdate.model_validate({"calibraton": {}})
    with pytest.raises(ValueError, match="no such verifier model: ViT-H-14"):
        VerifierUpdate.model_validate({"calibration": {"ViT-H-14": measured}}).apply_to(base)


def test_a_config_with_fewer_graphs_than_shapes_is_refused_naming_the_limit():
    """Every size times every batch size is captured at replica start, or the config is refused."""
    with pytest.raises(ValueError) as refused:
        AppArgs.model_validate({"flux": {"cuda_graphs": 8}})
    assert (
        "flux.cuda_graphs: 8 graphs cannot hold the 20 shapes a replica serves (limits.sizes: 5 x "
        "batching.generator.max_batch_size: 4); set cuda_graphs: 20, or offer fewer sizes or smaller batches"
    ) in str(refused.value)


def test_a_request_may_ask_for_more_images_than_a_batch_holds():
    """They are generated in parts of the batch size (the shapes a replica warmed up), not refused."""
    args = AppArgs.model_validate({"limits": {"max_images": 8}, "batching": {"generator": {"max_batch_size": 2}}})
    assert (args.limits.max_images, args.batching.generator.max_batch_size) == (8, 2)
