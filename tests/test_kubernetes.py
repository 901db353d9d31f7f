"""The KubeRay manifest: generated from serve_config.yaml (so the two cannot drift), a valid RayService by
KubeRay's own CRD schema, and serving exactly the production config, which passes the preflight."""

import copy

import jsonschema
import pytest
import yaml

from conftest import REPO
from deployments import kuberay
from deployments.check import config_problems

MANIFEST = REPO / "configs/rayservice.yaml"
CRD = REPO / "tests/data/kuberay/ray.io_rayservices.yaml"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def rayservice_schema() -> jsonschema.Draft7Validator:
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB of YAML
    version = next(version for version in crd["spec"]["versions"] if version["name"] == "v1")
    return jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])


def test_the_committed_manifest_is_what_serve_config_generates(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    kuberay.main(["serve_config.yaml", "-o", str(tmp_path / "rayservice.yaml")])
    assert (tmp_path / "rayservice.yaml").read_text() == MANIFEST.read_text(), (
        "configs/rayservice.yaml is stale: python -m deployments.kuberay serve_config.yaml -o configs/rayservice.yaml"
    )


def test_the_manifest_is_a_rayservice_by_kuberays_schema(manifest, rayservice_schema):
    rayservice_schema.validate(manifest)
    broken = copy.deepcopy(manifest)
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert not rayservice_schema.is_valid(broken)  # the schema does check what it validates


def test_the_manifest_serves_the_production_config_on_gpu_workers_that_advertise_their_vram(manifest):
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert serve_config == yaml.safe_load((REPO / "serve_config.yaml").read_text())
    assert config_problems(serve_config) == []
    cluster = manifest["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    workers = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert workers["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "$KUBERAY_GEN_RAY_START_CMD $(python -m deployments.vram)" in workers["args"][0]  # vram_gb at start
    assert manifest["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    for pod in (head["template"]["spec"], cluster["workerGroupSpecs"][0]["template"]["spec"]):
        container = pod["containers"][0]
        env = {variable["name"]: variable for variable in container["env"]}
        assert env["VORTEX_API_KEYS"]["valueFrom"]["secretKeyRef"]["key"] == "keys"
        assert env["HF_HOME"]["value"].startswith("/models/") and env["TORCHINDUCTOR_CACHE_DIR"]["value"]
        assert env["CUDA_CACHE_PATH"]["value"].startswith(env["TORCHINDUCTOR_CACHE_DIR"]["value"])  # one folder
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
