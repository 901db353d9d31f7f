"""Compiled regions saved whole, so that a restarted or added replica loads them instead of tracing them again.

`torch.compile` keeps Inductor's kernels on disk, but in every new process Dynamo traces each region's
Python again: 18.6 s of a 37.8 s warm start with the fp8 profile on an H200. torch's precompile API
(`torch.compile(...).aot_compile`, experimental since torch 2.9) saves a traced and compiled function, and
`torch.compiler.load_compiled_function` loads it in 0.05-0.6 s (H200, torch 2.11). Dynamo's guards are not
kept: the store picks a function by its own signature of the call, and rebuilding hundreds of guards on the
weights cost more than the rest of a load.

A region's weights are inputs of its compiled function, which runs the region's code on an empty copy of
it (a template on the meta device): one file serves every block of a class and holds no weights. There is
one file per input signature (shapes, strides, dtypes, devices), as with `dynamic=False`; inputs are made dense
first, so that a block called on slices of a tensor (FLUX's single blocks after the first) shares the file
of one called on whole tensors. Files sit in a folder named after what they depend on (the template's
structure, the source of its classes, this module's code that is traced, compiled or calls the compiled function,
the package, torch, Python, CUDA and GPU versions): after such a change a replica compiles into a new folder, and old
ones can be deleted; a change to how files are found, read ahead or recorded keeps the folder. Beside them, each
warm-up plan (the engine's settings, sizes and batch sizes) keeps the list of files its last start asked for, in
order: the next start with that plan reads those ahead, and no file of a size or batch it no longer serves. The files
are pickles: only the service may write the folder.
"""

import copy
import hashlib
import inspect
import itertools
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch._prims_common import make_contiguous_strides_for
from torch.utils._pytree import tree_flatten, tree_map_only

logger = logging.getLogger(__name__)


def region_function(template: torch.nn.Module) -> Callable:
    """`run(weights, args, kwargs)`: `template`'s forward with those weights."""

    def run(weights: dict[str, torch.Tensor], args: tuple, kwargs: dict) -> Any:
        return torch.func.functional_call(template, weights, args, kwargs)

    return run


def no_guards(entries: list) -> list[bool]:
    """Dynamo keeps none of its guards: the store's signature of a call stands for them. Rebuilding hundreds of
    guards on a region's weights was most of a file's load (0.2 s on the H200 host), and every call checked them."""
    return [False] * len(entries)


class RegionStore:
    """Compiled functions of regions, by template and input signature: loaded from `folder`, else compiled there."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.templates: dict[tuple, tuple[torch.nn.Module, str]] = {}  # by the region's structure and weights
        self.functions: dict[tuple, Callable] = {}
        self.loaded = 0
        self.compiled = 0
        self.read_ahead = 0  # of `loaded`, read on the prefetch thread before they were asked for
        self.read_unused = 0  # read on the prefetch thread and never asked for
        self.seconds = 0.0  # spent loading (on the prefetch thread too) and compiling
        self._prefetcher: ThreadPoolExecutor | None = None  # within `prefetching`
        self._prefetched: dict[Path, Future] = {}
        self._plan = ""  # within `prefetching`: what the caller will run, named by it
        self._asked_for: list[Path] = []  # files, in the order compiled_function first wanted them

    def install(self, module: torch.nn.Module) -> None:
        """From now on `module` runs through the store. Blocks share a template when their structure and their
        weights' shapes, dtypes and layouts agree (a block whose weights were left unquantized gets its own).
        Within `prefetching`, a new template's saved regions start loading at once. A module installed already is
        left as it is (fp8 blocks are installed as they load, and met again by the speed setup)."""
        if isinstance(module.forward, PrecompiledRegion):
            return
        kind = (repr(module), weight_facts(module))
        if kind not in self.templates:
            template = empty_copy(module)
            digest = self._digest(template, module)
            self.templates[kind] = (template, digest)
            if self._prefetcher is not None:
                self._prefetch(template, digest)
        module.forward = PrecompiledRegion(module, self, *self.templates[kind])

    def compiled_function(self, region: "PrecompiledRegion", weights: dict, args: tuple, kwargs: dict) -> Callable:
        """The function for `region` at these inputs: already loaded, read from the folder, or compiled now (and
        saved). The signature covers what Dynamo's guards would check: inputs' shapes, strides, dtypes, devices,
        autograd state, and (through the digest) the weights'."""
        leaves, spec = tree_flatten((args, kwargs))
        signature = (
            region.digest,
            str(spec),
            torch.is_grad_enabled(),
            torch.is_inference_mode_enabled(),
            *(tensor_facts(x) if isinstance(x, torch.Tensor) else repr(x) for x in leaves),
        )
        function = self.functions.get(signature)
        if function is None:
            key = hashlib.sha256(repr(signature).encode()).hexdigest()[:32]
            path = self._folder_of(region.digest) / f"{type(region.template).__name__}-{key}.bin"
            self._asked_for.append(path)
            prefetched = self._prefetched.pop(path, None)
            function, seconds = prefetched.result() if prefetched is not None else self._load(path, region.template)
            if function is not None:
                self.loaded += 1
                self.read_ahead += prefetched is not None
            else:
                start = time.perf_counter()
                function = self._compile(path, region.template, weights, args, kwargs)
                seconds += time.perf_counter() - start
            self.functions[signature] = function
            self.seconds += seconds
        return function

    def _load(self, path: Path, template: torch.nn.Module) -> tuple[Callable | None, float]:
        """The function saved at `path`, or None where there is none or it cannot be read; and the seconds taken."""
        start = time.perf_counter()
        if not path.is_file():
            return None, 0.0
        try:
            with path.open("rb") as file:
                function = torch.compiler.load_compiled_function(file, external_data={"template": template})
        except Exception:  # an unreadable or incompatible file is compiled again and replaced, never fatal
            logger.warning("Could not load the compiled region %s; compiling it again", path, exc_info=True)
            function = None
        return function, time.perf_counter() - start

    @contextmanager
    def prefetching(self, plan: str) -> Iterator[None]:
        """Within: the saved regions that the last start with the same `plan` (what the caller will run, as text:
        the engine's settings, warm-up sizes and batch sizes) asked for load on a background thread, in the order it
        asked for them, each template's from when it is installed (or from the start, for templates installed
        before), while the caller's thread goes on: copying the next blocks' weights to the GPU, which leaves the
        GIL free, and running the regions already loaded. Loading is Python work, so it gains only where the caller
        waits, and it slows the caller wherever both want the GIL (H200: the warm-up got shorter and the load
        longer, docs/performance.md). Files of other plans (sizes or batches a deployment no longer serves) are not
        read; a plan's first start loads each file when it is asked for. On a clean exit, the files asked for
        become the plan's record; on exit, files not yet asked for are no longer loaded."""
        self._plan = hashlib.sha256(plan.encode()).hexdigest()[:16]
        self._asked_for = []
        self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="region-prefetch")
        for template, digest in self.templates.values():
            self._prefetch(template, digest)
        try:
            yield
            self._record_asked_for()
        finally:
            self._prefetcher.shutdown(wait=True, cancel_futures=True)
            self._prefetcher = None
            unused = [future for future in self._prefetched.values() if not future.cancelled()]
            self.read_unused += sum(future.result()[0] is not None for future in unused)
            self._prefetched.clear()

    def _prefetch(self, template: torch.nn.Module, digest: str) -> None:
        """Queue one template's saved regions on the prefetch thread, as the plan's record lists them."""
        record = self._record_of(self._folder_of(digest))
        if record.is_file():
            for path in (record.parent / name for name in record.read_text().split()):
                self._prefetched[path] = self._prefetcher.submit(self._load, path, template)

    def _record_asked_for(self) -> None:
        """Write the plan's record in each folder the caller asked for files of. A folder that cannot be written (a
        read-only volume of regions compiled elsewhere) keeps its record, or none: the next start reads less ahead."""
        folders: dict[Path, list[str]] = {}
        for path in self._asked_for:
            folders.setdefault(path.parent, []).append(path.name)
        for folder, names in folders.items():
            record = self._record_of(folder)
            partial = record.with_name(f"{record.name}.{socket.gethostname()}-{os.getpid()}.partial")  # one writer
            try:
                partial.write_text("\n".join(names) + "\n")
                partial.replace(record)  # atomic: replicas sharing the folder read a whole record or the last one
            except OSError:
                logger.warning("Could not record the regions asked for in %s", folder, exc_info=True)

    def _record_of(self, folder: Path) -> Path:
        """The file listing, in order, the files of `folder` that the current plan's last start asked for."""
        return folder / f"warm-up-{self._plan}.txt"

    def _folder_of(self, digest: str) -> Path:
        """Where the files of the regions with this digest (one template, one set of versions) are kept."""
        return self.folder / digest[:16]

    def _compile(self, path: Path, template: torch.nn.Module, weights: dict, args: tuple, kwargs: dict) -> Callable:
        with torch._dynamo.config.patch(enable_aot_compile=True):  # off by default before torch 2.12
            compiled = torch.compile(
                region_function(template),
                fullgraph=True,
                dynamic=False,
                # Triton's dynamic RBLOCK scaling adds configs after the kernel was saved; torch 2.11 loads a
                # kernel whose saved best config is one of those by benchmarking all its configs again (2.6 s
                # of an H200 warm start, and replicas that differ in their last bits; fixed in torch 2.12)
                options={"guard_filter_fn": no_guards, "dynamic_scale_rblock": False},
            )
            function = compiled.aot_compile(((weights, args, kwargs), {}))
        path.parent.mkdir(parents=True, exist_ok=True)
        function.save_compiled_function(str(path), external_data={"template": template})  # written atomically
        self.compiled += 1
        return function

    @staticmethod
    def _digest(template: torch.nn.Module, module: torch.nn.Module) -> str:
        """What a compiled region depends on besides its inputs: structure, code, and the versions that run it
        (torch refuses a file made with another GPU, CUDA or Triton: an H100 and an H200 need their own). Of this
        module, only the code that shapes a compiled function or calls it: an upgrade that changes the bookkeeping
        around the files (finding, reading ahead, recording) keeps every replica's folder warm."""
        classes = sorted({type(module) for module in template.modules()}, key=lambda c: f"{c.__module__}.{c.__name__}")
        modules = sorted({c.__module__ for c in classes})
        sources = [inspect.getsource(sys.modules[name]) for name in modules]
        compiled_code = (region_function, no_guards, empty_copy, RegionStore._compile, PrecompiledRegion.__call__)
        sources += [inspect.getsource(code) for code in compiled_code]
        packages = {name.split(".")[0] for name in modules}  # diffusers' version covers the code the blocks call
        versions = sorted((name, getattr(sys.modules[name], "__version__", None)) for name in packages)
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        facts = (
            repr(template),
            weight_facts(module),
            sources,
            versions,
            torch.__version__,
            torch.version.cuda,
            sys.version,
            gpu,
        )
        return hashlib.sha256(repr(facts).encode()).hexdigest()


def region_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The inputs that stand for `module`'s state in its compiled function: parameters and buffers by name."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def weight_facts(module: torch.nn.Module) -> tuple:
    """What a region's compiled function assumes of its weights, by name."""
    return tuple((name, *tensor_facts(tensor)) for name, tensor in region_weights(module).items())


def tensor_facts(tensor: torch.Tensor) -> tuple:
    """What Dynamo's guards would check of a tensor, and a compiled region relies on."""
    facts = (tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device, tensor.requires_grad)
    return (*facts, tensor.is_inference(), type(tensor))


def empty_copy(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with its weights on the meta device, copied without copying them. Made in inference mode, as the
    regions run: it is traced with their dispatch keys."""
    with torch.inference_mode():
        memo = {
            id(tensor): torch.nn.Parameter(torch.empty_like(tensor, device="meta"), requires_grad=False)
            if isinstance(tensor, torch.nn.Parameter)
            else torch.empty_like(tensor, device="meta")
            for tensor in itertools.chain(module.parameters(), module.buffers())
        }
        return copy.deepcopy(module, memo).eval()


def dense(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` with the strides of a new tensor of its shape (copied only if it has others). `contiguous()` is not
    enough: a slice along dim 1 at batch size 1 is contiguous, yet its batch stride differs (the signature has it)."""
    dense_strides = make_contiguous_strides_for(tensor.shape)
    return tensor if tensor.stride() == dense_strides else tensor.clone(memory_format=torch.contiguous_format)


class PrecompiledRegion:
    """Stands in for a region's `forward`: its compiled function for these inputs, called with its weights."""

    def __init__(self, module: torch.nn.Module, store: RegionStore, template: torch.nn.Module, digest: str) -> None:
        self.module = module
        self.store = store
        self.template = template
        self.digest = digest

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        weights = region_weights(self.module)
        args, kwargs = tree_map_only(torch.Tensor, dense, (args, kwargs))
        return self.store.compiled_function(self, weights, args, kwargs)(weights, args, kwargs)
