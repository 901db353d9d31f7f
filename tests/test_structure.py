"""What the code's layout promises its users: caller types without the model stack, one documented home
for configuration, and YAML profiles that state only what differs from the defaults."""

import json
import subprocess
import sys

import pytest
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from conftest import CONFIGS, REPO, load_yaml
from deployments.config import SECTIONS, AppArgs, application_deployments, configuration_reference

MODEL_STACK = ("torch", "diffusers", "transformers", "open_clip")


def modules_loaded_by(statement: str) -> list[str]:
    """Top-level packages and `deployments` modules a fresh interpreter has after `statement`."""
    script = f"import sys; {statement}; print(__import__('json').dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def test_handle_callers_import_the_api_without_the_model_stack():
    loaded = modules_loaded_by("from deployments.api import ImageRequest, VerificationFailedError")
    assert [name for name in MODEL_STACK if name in loaded] == []
    assert "ray" not in loaded  # pydantic and the standard library only


@pytest.mark.parametrize("module", ["deployments.ingress", "deployments.app"])
def test_the_ingress_and_the_application_graph_import_no_engine(module):
    """The Ingress runs without the model stack, and Serve builds the application (on the head node)
    without it: only the GPU replicas load the engines."""
    loaded = modules_loaded_by(f"import {module}")
    assert [name for name in MODEL_STACK if name in loaded] == []
    assert [name for name in loaded if name.startswith("deployments.engines")] == []


def test_the_configuration_reference_is_current():
    """Regenerate it with `python -m deployments.config docs/configuration.md`."""
    assert (REPO / "docs/configuration.md").read_text() == configuration_reference()


@pytest.mark.parametrize(("path", "model"), SECTIONS, ids=[path for path, _ in SECTIONS])
def test_every_setting_is_documented(path, model):
    assert model.__doc__, path
    assert [name for name, field in model.model_fields.items() if not field.description] == []


def restated_defaults(values: dict, defaults: BaseModel, path: str) -> list[str]:
    """Keys of `values` (YAML) whose value is what `defaults` (the model the code fills in) has already."""
    restated = []
    for key, value in values.items():
        default = getattr(defaults, key)
        if isinstance(value, dict) and isinstance(default, BaseModel):
            restated += restated_defaults(value, default, f"{path}.{key}")
        elif value == to_jsonable_python(default):
            restated.append(f"{path}.{key}")
    return restated


DEPLOYMENTS = {deployment.name: deployment for deployment in application_deployments()}


@pytest.mark.parametrize("path", CONFIGS)
def test_profiles_state_only_what_differs_from_the_defaults(path):
    for app in load_yaml(path)["applications"]:
        assert restated_defaults(app["args"], AppArgs(), "args") == []
        for entry in app.get("deployments", []):
            deployment = DEPLOYMENTS[entry["name"]]
            for option in ("max_ongoing_requests", "max_queued_requests", "ray_actor_options"):
                assert entry.get(option) != getattr(deployment, option), f"{entry['name']}.{option}"
