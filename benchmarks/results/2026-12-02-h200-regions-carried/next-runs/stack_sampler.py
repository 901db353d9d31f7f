"""One-off: where a replica's start goes, by sampling every thread's Python stack every 5 ms until the engine is
ready (the first `freeze_startup_heap` call). A thread waiting in C (a CUDA call, a lock, the GIL) shows the Python
line that called into C. Usage:

    python stack_sampler.py OUT.txt -m benchmarks.replica_start --child warm --cache-dir D [--model DIR]
"""

import collections
import os
import runpy
import sys
import threading
import time

INTERVAL_S = 0.005
out_path, module, *rest = sys.argv[1], *sys.argv[3:]
assert sys.argv[2] == "-m"
START = time.perf_counter()
ROOT = os.getcwd() + "/"
samples: list[tuple[float, str, tuple[tuple[str, str, int], ...]]] = []
stop_at: list[float] = []


def walk(frame) -> tuple[tuple[str, str, int], ...]:
    """Innermost first: (file, function, line)."""
    stack = []
    while frame is not None and len(stack) < 80:
        code = frame.f_code
        stack.append((code.co_filename, code.co_qualname, frame.f_lineno))
        frame = frame.f_back
    return tuple(stack)


def sample() -> None:
    me = threading.get_ident()
    while not stop_at:
        time.sleep(INTERVAL_S)
        now = time.perf_counter() - START
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            if ident != me:
                samples.append((now, names.get(ident, str(ident)), walk(frame)))


def short(site: tuple[str, str, int]) -> str:
    path, function, line = site
    for marker in ("site-packages/", ROOT, "/lib/python3.12/", "/lib/python3.11/"):
        path = path.split(marker, 1)[-1]
    return f"{path}:{line} {function}"


def report() -> str:
    end = stop_at[0] if stop_at else time.perf_counter() - START
    kept = [s for s in samples if s[0] <= end]
    lines = [f"sampled {end:.1f} s, every {INTERVAL_S * 1000:.0f} ms; {len(kept)} samples"]
    threads = collections.Counter(name for _, name, _ in kept)
    for name, count in threads.most_common():
        mine = [stack for _, n, stack in kept if n == name]
        seconds = count * INTERVAL_S
        lines.append(f"\n=== thread {name}: {seconds:.1f} s of samples")
        leaf = collections.Counter(short(stack[0]) for stack in mine if stack)
        lines.append("-- innermost Python frame (where it runs, or calls into C)")
        lines += [f"{c * INTERVAL_S:7.2f} s  {site}" for site, c in leaf.most_common(25)]
        inclusive = collections.Counter()
        for stack in mine:
            for site in {(path, function) for path, function, _ in stack if "/deployments/" in path}:
                inclusive[site] += 1
        lines.append("-- inclusive, functions of deployments/")
        lines += [f"{c * INTERVAL_S:7.2f} s  {short((p, f, 0))}" for (p, f), c in inclusive.most_common(30)]
    # Where the main thread's warm-up goes, all functions (torch's and inductor's too), inclusive and innermost.
    main = [stack for _, name, stack in kept if name == "MainThread"]
    warm_up = [stack for stack in main if any(function == "FluxEngine.warm_up" for _, function, _ in stack)]
    lines.append(f"\n=== main thread in FluxEngine.warm_up: {len(warm_up) * INTERVAL_S:.1f} s of samples")
    inclusive = collections.Counter()
    for stack in warm_up:
        for site in {(path, function) for path, function, _ in stack}:
            inclusive[site] += 1
    lines.append("-- inclusive, all functions")
    lines += [f"{c * INTERVAL_S:7.2f} s  {short((p, f, 0))}" for (p, f), c in inclusive.most_common(60)]
    leaf = collections.Counter(short(stack[0]) for stack in warm_up if stack)
    lines.append("-- innermost Python frame")
    lines += [f"{c * INTERVAL_S:7.2f} s  {site}" for site, c in leaf.most_common(30)]
    # The main thread's timeline: the innermost function of ours, in 250 ms bins.
    lines.append("\n=== main thread timeline (innermost deployments/ function, 250 ms bins; * = other)")
    bins: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for t, name, stack in kept:
        if name != "MainThread":
            continue
        label = next((f"{function}" for path, function, _ in stack if "/deployments/" in path), None)
        if label is None:
            label = "* " + short(stack[0]).split(" ", 1)[1] if stack else "*"
        bins[int(t / 0.25)][label] += 1
    previous, since = None, 0.0
    for index in sorted(bins):
        label = bins[index].most_common(1)[0][0]
        if label != previous:
            if previous is not None:
                lines.append(f"{since:6.2f}-{index * 0.25:6.2f} s  {previous}")
            previous, since = label, index * 0.25
    lines.append(f"{since:6.2f}-{end:6.2f} s  {previous}")
    return "\n".join(lines)


def stop(*args, **kwargs):
    if not stop_at:
        stop_at.append(time.perf_counter() - START)
    return freeze(*args, **kwargs)


threading.Thread(target=sample, name="sampler", daemon=True).start()
import deployments.engines.heap as heap  # noqa: E402  (light: gc and contextlib only)

freeze = heap.freeze_startup_heap
heap.freeze_startup_heap = stop
sys.argv = [module, *rest]
sys.path.insert(0, os.getcwd())
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    with open(out_path, "w") as file:
        file.write(report() + "\n")
