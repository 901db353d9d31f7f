"""The application graph: Ingress -> FluxGenerator -> ClipVerifier, built from the YAML `args:` block.

`serve run configs/local.yaml` serves the CPU profile; `serve deploy serve_config.yaml` the production one.
"""

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from deployments.api import ImageLimits
from deployments.engines.clip import VerifierConfig
from deployments.engines.flux import FluxConfig
from deployments.generator import FluxGenerator
from deployments.ingress import Ingress
from deployments.verifier import ClipVerifier


class AppArgs(BaseModel):
    """Everything under `args:` in a Serve config; Ray validates it against this model."""

    model_config = ConfigDict(extra="forbid")

    flux: FluxConfig = Field(default_factory=FluxConfig)
    verifier: VerifierConfig
    limits: ImageLimits = Field(default_factory=ImageLimits)


def build_app(args: AppArgs) -> Application:
    generator = FluxGenerator.bind(args.flux)
    verifier = ClipVerifier.bind(args.verifier)
    return Ingress.bind(generator, verifier, args.limits)
