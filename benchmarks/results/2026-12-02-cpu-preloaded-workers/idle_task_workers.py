"""One-off (CPU, Ray 2.60): does a detached actor, as a Serve replica is, start in an idle worker that a finished task
of the same driver left behind, its modules preloaded? Run against a cluster started with
`RAY_preload_python_modules=deployments.engines.flux ray start --head --num-cpus=4 --num-gpus=2`, ADDR=its address."""

import os
import sys
import time

import ray

ray.init(address=os.environ["ADDR"], namespace="exp", logging_level="ERROR")


@ray.remote
def noop() -> tuple:
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"), "deployments.engines.flux" in sys.modules


@ray.remote
class Probe:
    def info(self) -> tuple:
        return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"), "deployments.engines.flux" in sys.modules


for options in ({"num_cpus": 1}, {"num_cpus": 1, "num_gpus": 0.5}):
    print("task", options, ray.get(noop.options(**options).remote()))
time.sleep(2)
for index, options in enumerate(({"num_cpus": 1, "num_gpus": 1}, {"num_cpus": 1})):
    start = time.perf_counter()
    probe = Probe.options(name=f"probe{index}", lifetime="detached", **options).remote()
    print("detached actor", options, ray.get(probe.info.remote()), f"created in {time.perf_counter() - start:.1f} s")
