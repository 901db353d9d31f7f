"""The application graph: Ingress -> FluxGenerator -> ClipVerifier, built from the YAML `args:` block.

`serve run configs/local.yaml` serves the CPU profile; `serve deploy serve_config.yaml` the production one.
"""

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.serve import Application

from deployments.api import ImageLimits, ServingConfig
from deployments.engines.clip import VerifierConfig
from deployments.engines.flux import FluxConfig
from deployments.generator import BatchingConfig, FluxGenerator
from deployments.ingress import Ingress
from deployments.verifier import ClipVerifier


class AppArgs(BaseModel):
    """Everything under `args:` in a Serve config; Ray validates it against this model."""

    model_config = ConfigDict(extra="forbid")

    flux: FluxConfig = Field(default_factory=FluxConfig)
    verifier: VerifierConfig
    limits: ImageLimits = Field(default_factory=ImageLimits)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)

    @model_validator(mode="after")
    def _sizes_fit_the_generator(self) -> "AppArgs":
        """A size the API offers but the engine refuses would fail every such request at the GPU."""
        for size in self.limits.sizes:
            sides = [int(side) for side in size.split("x")]
            if any(side % 16 or not self.flux.min_side <= side <= self.flux.max_side for side in sides):
                raise ValueError(
                    f"limits.sizes: {size} is not two multiples of 16 within flux.min_side..flux.max_side "
                    f"({self.flux.min_side}..{self.flux.max_side})"
                )
        return self

    @model_validator(mode="after")
    def _verifier_is_calibrated(self) -> "AppArgs":
        if missing := [model.name for model in self.verifier.models if model.calibration is None]:
            raise ValueError(
                f"verifier.models: {', '.join(missing)} need a `calibration` block; "
                "`python -m deployments.calibrate` measures it on your own images"
            )
        return self


def build_app(args: AppArgs) -> Application:
    generator = FluxGenerator.bind(args.flux, args.batching)
    verifier = ClipVerifier.bind(args.verifier)
    return Ingress.bind(generator, verifier, args.limits, args.serving)
