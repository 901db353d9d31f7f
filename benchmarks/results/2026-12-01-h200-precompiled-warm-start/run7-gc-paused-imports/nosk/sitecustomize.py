# scikit-learn hidden, as in an image built from pyproject.toml (the GPU test host has it; transformers imports it
# when it is installed). Then the next sitecustomize on the path, if any, as Python would have run it.
import importlib.machinery
import importlib.util
import os
import sys

sys.modules["sklearn"] = None
_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here]
)
if _spec is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
