"""A replica's Python heap: no garbage collection while it imports, and its startup heap out of later collections.

A replica imports torch, diffusers and transformers (about 570,000 objects, nearly none of them garbage), then
loads and warms up an engine, then serves for hours. Python's full collections walk every tracked object
holding the GIL, and run whenever enough new objects have survived: during the imports that is a collection
of everything imported so far, again and again (CPU profile, 2-core machine: 8 full collections, 1.3-2.2 s of
a 10 s import); after the start, a pause of the whole replica on whichever request allocates at the wrong
moment. No torch import here: this module must be importable before torch is.
"""

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def imports_without_collections() -> Iterator[None]:
    """Import with the garbage collector paused, then freeze what exists: later collections (the load's, the
    warm-up's, whose tracing and loading of compiled code make many short-lived objects) skip the imported
    modules. What the imports left unreachable is frozen with them and never freed: 15,000 objects on the CPU
    profile, a few MB once per process, against a full collection of the whole heap to find them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def freeze_startup_heap() -> None:
    """Collect once, then leave every object alive now (weights' wrappers, compiled code, the engine) out of all
    later garbage collections. Only for a process that keeps its engine for life: what is frozen is never
    collected, even once unreachable (`gc.unfreeze()` gives it back)."""
    gc.collect()
    gc.freeze()
