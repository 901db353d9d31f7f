"""The application graph: Ingress -> FluxGenerator -> ClipVerifier, built from the YAML `args:` block.

`serve run configs/local.yaml` serves the CPU profile; `serve deploy serve_config.yaml` the production one.
"""

from ray.serve import Application

from deployments.config import AppArgs
from deployments.generator import FluxGenerator
from deployments.ingress import Ingress
from deployments.verifier import ClipVerifier


def build_app(args: AppArgs) -> Application:
    generator = FluxGenerator.bind(args.flux, args.batching.generator, args.limits.shapes())
    verifier = ClipVerifier.bind(args.verifier, args.batching.verifier)
    return Ingress.bind(generator, verifier, args.limits, args.serving)
