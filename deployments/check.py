"""Preflight a Serve config before `serve deploy`: `python -m deployments.check CONFIG [--address URL]`.

`serve deploy` accepts what Ray's schema accepts and reports success; the application fails later,
in its replicas. This command fails first, naming the key, for:
- Ray's own schema, and keys Ray would silently ignore (in an application, a deployment entry, its
  `ray_actor_options` or `autoscaling_config`);
- `args:` against `deployments.config.AppArgs`;
- every `user_config` against its deployment's model (only the ClipVerifier takes one);
- an Ingress that Ray's proxy would answer for, in plain text, before the application can: a
  `max_queued_requests`, or `max_ongoing_requests` not above `serving.max_concurrent_requests`;
- with `--address` (the dashboard, as for `serve deploy`): a deployment that no node of the running
  cluster could ever place, by its CPUs, GPUs and custom resources such as `vram_gb`.
Exit status 0 when the config is good, 1 with one line per problem otherwise.
"""

import argparse
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema, ServeApplicationSchema, ServeDeploySchema

from deployments.config import AppArgs, VerifierUpdate, application_deployments

USER_CONFIGS: dict[str, type[BaseModel]] = {"ClipVerifier": VerifierUpdate}


def deployment_entry(app: dict, name: str) -> dict:
    """The application's `deployments:` entry for `name`; empty when the config leaves it to the code."""
    return next((entry for entry in app.get("deployments", []) if entry["name"] == name), {})


def unknown_keys(section: dict, schema: type[BaseModel], where: str) -> list[str]:
    return [
        f"{where}.{key}: Ray does not know this key and would ignore it"
        for key in sorted(set(section) - set(schema.model_fields))
    ]


def validation_problems(error: ValidationError, where: str) -> list[str]:
    return [f"{where}.{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors()]


def config_problems(config: dict) -> list[str]:
    """Everything wrong with a Serve config that can be known without a cluster."""
    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as error:
        return validation_problems(error, "config")
    defaults = {deployment.name: deployment for deployment in application_deployments()}
    problems = []
    for app in config["applications"]:
        where = f"applications[{app['name']}]"
        problems += unknown_keys(app, ServeApplicationSchema, where)
        try:
            args = AppArgs.model_validate(app.get("args", {}))
        except ValidationError as error:
            problems += validation_problems(error, f"{where}.args")
            continue
        for entry in app.get("deployments", []):
            name = entry["name"]
            at = f"{where}.deployments[{name}]"
            problems += unknown_keys(entry, DeploymentSchema, at)
            problems += unknown_keys(
                entry.get("ray_actor_options", {}), RayActorOptionsSchema, f"{at}.ray_actor_options"
            )
            problems += unknown_keys(entry.get("autoscaling_config", {}), AutoscalingConfig, f"{at}.autoscaling_config")
            if name not in defaults:
                problems.append(f"{at}: the application has no deployment {name}")
            elif "user_config" in entry:
                if name not in USER_CONFIGS:
                    problems.append(f"{at}.user_config: {name} takes no user_config")
                else:
                    try:
                        USER_CONFIGS[name].model_validate(entry["user_config"]).apply_to(args.verifier)
                    except ValidationError as error:
                        problems += validation_problems(error, f"{at}.user_config")
                    except ValueError as error:
                        problems.append(f"{at}.user_config: {error}")
        ingress = deployment_entry(app, "Ingress")
        if ingress.get("max_queued_requests", -1) != -1:
            problems.append(
                f"{where}.deployments[Ingress].max_queued_requests: Ray's proxy would refuse requests in plain "
                "text; limit them with args.serving.max_concurrent_requests, which answers JSON"
            )
        ongoing = ingress.get("max_ongoing_requests", defaults["Ingress"].max_ongoing_requests)
        if ongoing <= args.serving.max_concurrent_requests:
            problems.append(
                f"{where}.deployments[Ingress].max_ongoing_requests: {ongoing} must be above "
                f"args.serving.max_concurrent_requests ({args.serving.max_concurrent_requests}), or Ray queues "
                "and refuses requests before the application can answer them"
            )
    return problems


def replica_needs(app: dict) -> dict[str, dict[str, float]]:
    """What one replica of each deployment asks Ray for: its YAML options over the code's defaults."""
    needs = {}
    for deployment in application_deployments():
        options = deployment_entry(app, deployment.name).get("ray_actor_options", deployment.ray_actor_options)
        need = {"CPU": options.get("num_cpus", 1), "GPU": options.get("num_gpus", 0), **options.get("resources", {})}
        needs[deployment.name] = {resource: amount for resource, amount in need.items() if amount}
    return needs


def placement_problems(config: dict, nodes: list[dict[str, float]]) -> list[str]:
    """Deployments that no node could place even when empty, given each node's total resources."""
    problems = []
    for app in config["applications"]:
        for name, need in replica_needs(app).items():
            if not any(all(node.get(key, 0.0) >= amount for key, amount in need.items()) for node in nodes):
                problems.append(
                    f"applications[{app['name']}].deployments[{name}]: no node of the cluster can place a replica "
                    f"needing {need}; the nodes have {nodes}"
                )
    return problems


def cluster_nodes(address: str) -> list[dict[str, float]]:
    """Total resources of each alive node, from the dashboard at `address`."""
    from ray.util.state import list_nodes

    return [node.resources_total for node in list_nodes(address=address) if node.state == "ALIVE"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="The Serve config file.")
    parser.add_argument("--address", help="The running cluster's dashboard, e.g. http://HEAD_IP:8265.")
    args = parser.parse_args(argv)

    config = yaml.safe_load(args.config.read_text())
    problems = config_problems(config)
    if not problems and args.address:
        problems = placement_problems(config, cluster_nodes(args.address))
    for problem in problems:
        print(f"{args.config}: {problem}", file=sys.stderr)
    if not problems:
        checked = " and its placement on " + args.address if args.address else ""
        print(f"{args.config}: ok ({len(config['applications'])} application(s){checked})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
