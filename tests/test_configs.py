"""Serve configs: valid for Ray's own schema, free of keys Ray would silently ignore, buildable without weights."""

import pytest
from ray.serve._private.build_app import build_app as build_deployments
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema, ServeApplicationSchema, ServeDeploySchema

from conftest import CONFIGS, load_yaml
from deployments.app import build_app
from deployments.config import AppArgs, FluxConfig


def unknown_keys(section: dict, schema) -> set[str]:
    return set(section) - set(schema.model_fields)


@pytest.mark.parametrize("path", CONFIGS)
def test_config_passes_rays_schema(path):
    ServeDeploySchema.model_validate(load_yaml(path))


@pytest.mark.parametrize("path", CONFIGS)
def test_config_has_no_keys_ray_would_ignore(path):
    """Ray ignores unknown keys in deployment entries; a typo there would silently change nothing."""
    for app in load_yaml(path)["applications"]:
        assert not unknown_keys(app, ServeApplicationSchema), app.keys()
        for deployment in app.get("deployments", []):
            assert not unknown_keys(deployment, DeploymentSchema), deployment
            assert not unknown_keys(deployment.get("ray_actor_options", {}), RayActorOptionsSchema), deployment
            assert not unknown_keys(deployment.get("autoscaling_config", {}), AutoscalingConfig), deployment


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
