"""Replay a model call as a CUDA graph: one launch instead of thousands of small kernel launches.

Eager batch-1 Flux at 512x512 launches about 13,000 kernels per image. Regional compilation fuses
many of them, but each of the 57 blocks still launches its kernels one by one from Python. After
compilation a bf16 H100 step is GPU-bound and graphs save little (3 ms per image); they matter where
launches still dominate, e.g. NF4 (bitsandbytes) in the 12 GB mode. A CUDA graph records one call
for one set of input shapes and replays all of its kernels with a single launch. Shapes in Flux are
fixed per (batch, width, height): the prompts are padded to fixed lengths, so each new shape is
captured once on first use (one eager call, which compiles, then the capture) and replayed after that.

`torch.compile(mode="reduce-overhead")` builds graphs itself, but with regional compilation each
block gets its own graph and overwrites the previous block's output (seen on an H100, torch 2.11:
"accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run"). Capturing
the whole call around the regionally compiled blocks keeps the short compile and gives one graph
per denoising step.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten


@cache
def _capture_stream(device: int) -> torch.cuda.Stream:
    """One side stream per device for every warm-up and capture. cuBLAS keeps a workspace (32 MiB on
    an H100) for each stream that has run a matmul, for the life of the process: a new stream per
    capture left four of them in the 12 GB mode, and could leave dozens with several runners."""
    return torch.cuda.Stream(device)


@dataclass
class _CapturedCall:
    graph: torch.cuda.CUDAGraph
    inputs: list[Any]  # the graph's static input tensors (and the call's non-tensor arguments)
    outputs: list[Any]
    output_spec: TreeSpec


class CudaGraphRunner:
    """Calls `function` through CUDA graphs, one per distinct input signature, up to `max_graphs`.

    Drop-in for the function: same arguments, same results (copied out of the graph's buffers, so
    callers may keep them). Tensor arguments are copied into the graph's inputs on every call;
    non-tensor arguments must stay the same for a graph to be reused. Beyond `max_graphs`
    signatures, and whenever autograd is on, it calls `function` directly.
    All graphs share one memory pool: only one replays at a time, so their scratch memory overlaps.
    """

    def __init__(self, function: Callable, max_graphs: int) -> None:
        self.function = function
        self.max_graphs = max_graphs
        self.captured: dict[tuple, _CapturedCall] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.capture_s = 0.0  # the CPU's time capturing, each eager call's included (the GPU may run them later)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return self.function(*args, **kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        signature = (spec, *((x.shape, x.dtype, x.device) if isinstance(x, torch.Tensor) else x for x in leaves))
        call = self.captured.get(signature)
        if call is None:
            if len(self.captured) >= self.max_graphs:
                return self.function(*args, **kwargs)
            start = time.perf_counter()
            call, result = self._capture(leaves, spec)
            self.captured[signature] = call
            self.capture_s += time.perf_counter() - start
            return result
        for static, value in zip(call.inputs, leaves, strict=True):
            if isinstance(static, torch.Tensor):
                static.copy_(value)
        call.graph.replay()
        return tree_unflatten([x.clone() if isinstance(x, torch.Tensor) else x for x in call.outputs], call.output_spec)

    def _capture(self, leaves: list[Any], spec: TreeSpec) -> tuple[_CapturedCall, Any]:
        """Capture a graph for this signature; also return this call's result, from the eager call before the
        capture (a capture records kernels without running them), so the capturing call costs no replay."""
        inputs = [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves]
        args, kwargs = tree_unflatten(inputs, spec)
        # Warm up on a side stream, as torch.cuda.graph's docs ask: compilation, autotuning and
        # cuBLAS workspaces must happen before capture, not inside it. One call does all three (the docs'
        # example makes three); each call of a large shape costs a replica's start tenths of a second.
        current = torch.cuda.current_stream()
        side = _capture_stream(torch.cuda.current_device())
        side.wait_stream(current)
        with torch.cuda.stream(side):
            result = self.function(*args, **kwargs)
        current.wait_stream(side)
        for tensor in tree_flatten(result)[0]:
            if isinstance(tensor, torch.Tensor):
                tensor.record_stream(current)  # made on the side stream, used on this one: not reused too early
        # Captured without `torch.cuda.graph`, which first synchronizes the device and empties the allocator's cache
        # (freeing memory for the graph): the GPU runs the eager call while the CPU records its graph, and a
        # replica's warm-up waits for the GPU once, at its end, instead of at each of its 20-30 captures. What the
        # eager call freed stays cached for the next one; the engine empties the cache after its warm-up.
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side):
            # thread_local: other threads of the replica (metrics, the event loop) may touch CUDA meanwhile.
            graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
            try:
                output = self.function(*args, **kwargs)
            finally:
                graph.capture_end()
        outputs, output_spec = tree_flatten(output)
        return _CapturedCall(graph, inputs, outputs, output_spec), result

    def __len__(self) -> int:
        return len(self.captured)
