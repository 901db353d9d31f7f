"""Where the engines' logs go inside a Serve replica."""

import logging


def send_engine_logs_to_serve() -> None:
    """Route the engines' INFO logs (load time, VRAM, truncation warnings) through Serve's replica logger.

    Serve only sets up `ray.serve`; other loggers stay at WARNING with no replica context.
    """
    engines = logging.getLogger("deployments.engines")
    engines.setLevel(logging.INFO)
    engines.propagate = False
    for handler in logging.getLogger("ray.serve").handlers:
        if handler not in engines.handlers:
            engines.addHandler(handler)
