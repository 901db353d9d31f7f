"""A KubeRay `RayService` for a Serve config, so that the manifest and the config cannot drift.

    python -m deployments.kuberay serve_config.yaml -o configs/rayservice.yaml

`serveConfigV2` is the config file as written. The Ray cluster around it:
- a head group without GPUs (`num-gpus: 0`): the controller, a proxy, Ingress replicas;
- a GPU worker group whose pods advertise their GPU memory as `vram_gb` the way the README's
  `ray start $(python -m deployments.vram)` does, computed in each container as it starts: the
  annotation `ray.io/overwrite-container-cmd` (KubeRay 1.1+) lets the container run KubeRay's own
  `ray start` command (`$KUBERAY_GEN_RAY_START_CMD`) with those flags added;
- the project installed in the image (`--image`: the project's `pip install .` on top of
  `rayproject/ray` of the same Ray version);
- one ReadWriteMany volume (`--models-claim`) at /models on every pod for the Hugging Face cache
  (`HF_HOME`), Inductor's compile cache (`TORCHINDUCTOR_CACHE_DIR`) and, in it, the CUDA driver's cache of
  kernels it compiles from PTX (`CUDA_CACHE_PATH`), so a new replica on any node finds the weights and the
  compiled kernels;
- API keys from a Kubernetes Secret (`--api-keys-secret`, key `keys`, comma-separated) as
  `VORTEX_API_KEYS`, which the replicas read;
- readiness on the service's `/readyz` and liveness on `/healthz` (port 8000, every pod runs a proxy).
A fixed number of GPU pods (`--gpu-workers`): the VRAM-aware policy places replicas on the nodes
there are and holds back those that do not fit, so it would not ask Ray's autoscaler for more pods.
"""

import argparse
import importlib.metadata
import sys
from pathlib import Path

import yaml

MODELS = "/models"
SERVE_PORT = 8000


class _LiteralStrings(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, so the embedded Serve config stays readable; no YAML aliases."""

    def ignore_aliases(self, data) -> bool:
        return True


_LiteralStrings.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def container(name: str, image: str, start: str, resources: dict, api_keys_secret: str) -> dict:
    """A Ray container running `start` (after KubeRay's ulimit), with the shared volume, keys and probes."""
    return {
        "name": name,
        "image": image,
        "command": ["/bin/bash", "-lc", "--"],
        "args": [f"ulimit -n 65536; {start}"],
        "env": [
            {"name": "HF_HOME", "value": f"{MODELS}/huggingface"},
            {"name": "TORCHINDUCTOR_CACHE_DIR", "value": f"{MODELS}/torchinductor"},
            {"name": "CUDA_CACHE_PATH", "value": f"{MODELS}/torchinductor/cuda-jit"},
            {
                "name": "VORTEX_API_KEYS",
                "valueFrom": {"secretKeyRef": {"name": api_keys_secret, "key": "keys"}},
            },
        ],
        "ports": [
            {"containerPort": 6379, "name": "gcs"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": SERVE_PORT, "name": "serve"},
            {"containerPort": 8080, "name": "metrics"},
        ],
        "resources": {"limits": resources, "requests": resources},
        "volumeMounts": [{"name": "models", "mountPath": MODELS}],
        # Ready when the application can make images (generator warmed up, verifier running).
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": SERVE_PORT},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        # Alive while a proxy routes to an Ingress; the first start loads, compiles and captures for minutes.
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": SERVE_PORT},
            "initialDelaySeconds": 600,
            "periodSeconds": 30,
            "failureThreshold": 5,
        },
    }


def rayservice(
    config_text: str, name: str, image: str, gpu_workers: int, models_claim: str, api_keys_secret: str
) -> dict:
    """The RayService manifest serving `config_text` (a Serve config file's text)."""
    volumes = [{"name": "models", "persistentVolumeClaim": {"claimName": models_claim}}]
    head = container(
        "ray-head",
        image,
        "$KUBERAY_GEN_RAY_START_CMD",
        {"cpu": "4", "memory": "16Gi"},
        api_keys_secret,
    )
    worker = container(
        "ray-worker",
        image,
        "$KUBERAY_GEN_RAY_START_CMD $(python -m deployments.vram)",  # --num-gpus=N --resources={"vram_gb":M}
        {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"},
        api_keys_secret,
    )
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name, "annotations": {"ray.io/overwrite-container-cmd": "true"}},
        "spec": {
            "serveConfigV2": config_text,
            "rayClusterConfig": {
                "rayVersion": importlib.metadata.version("ray"),
                "enableInTreeAutoscaling": False,
                "headGroupSpec": {
                    "rayStartParams": {"num-gpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": {"spec": {"containers": [head], "volumes": volumes}},
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "gpu",
                        "replicas": gpu_workers,
                        "minReplicas": gpu_workers,
                        "maxReplicas": gpu_workers,
                        "rayStartParams": {},
                        "template": {"spec": {"containers": [worker], "volumes": volumes}},
                    }
                ],
            },
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="the Serve config, e.g. serve_config.yaml")
    parser.add_argument("-o", "--out", type=Path, help="the manifest to write (default: standard output)")
    parser.add_argument("--name", default="vortex")
    parser.add_argument("--image", default="vortex-serve:0.1.0", help="an image with the project installed")
    parser.add_argument("--gpu-workers", type=int, default=2, help="GPU pods (one GPU each)")
    parser.add_argument("--models-claim", default="vortex-models", help="a ReadWriteMany PersistentVolumeClaim")
    parser.add_argument("--api-keys-secret", default="vortex-api-keys", help="a Secret with key `keys`")
    args = parser.parse_args(argv)

    config_text = args.config.read_text()
    manifest = rayservice(config_text, args.name, args.image, args.gpu_workers, args.models_claim, args.api_keys_secret)
    header = (
        f"# Generated from {args.config} by `python -m deployments.kuberay` (--help lists its options): edit the\n"
        '# config and generate this again. README, "Kubernetes", says what to change per cluster.\n'
    )
    text = header + yaml.dump(manifest, Dumper=_LiteralStrings, sort_keys=False, width=120)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
