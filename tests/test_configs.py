"""Serve configs: valid for Ray's own schema, free of keys Ray would silently ignore, buildable without weights."""

import pytest
from ray.serve._private.build_app import build_app as build_deployments
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema, ServeDeploySchema

from conftest import load_yaml
from deployments.app import AppArgs, build_app
from deployments.engines.flux import FluxConfig

CONFIGS = ["serve_config.yaml", "configs/local.yaml", "configs/gpu-12gb.yaml"]


def unknown_keys(section: dict, schema) -> set[str]:
    return set(section) - set(schema.model_fields)


@pytest.mark.parametrize("path", CONFIGS)
def test_config_passes_rays_schema(path):
    ServeDeploySchema.model_validate(load_yaml(path))


@pytest.mark.parametrize("path", CONFIGS)
def test_config_has_no_keys_ray_would_ignore(path):
    """Ray ignores unknown keys in deployment entries; a typo there would silently change nothing."""
    for app in load_yaml(path)["applications"]:
        for deployment in app["deployments"]:
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
    assert {deployment["name"] for deployment in app_config["deployments"]} <= names


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
    options = {d["name"]: d for d in app_config["deployments"]}
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
