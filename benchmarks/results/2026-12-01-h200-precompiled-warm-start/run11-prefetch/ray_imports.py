"""Import the engine in a fresh plain process and in fresh Ray actors: are imports slower in a Ray worker?"""

import subprocess
import sys
import time

import ray

CODE = "import time; t = time.perf_counter(); import deployments.engines.flux; print(time.perf_counter() - t)"


def plain() -> float:
    return float(subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True).stdout.split()[-1])


@ray.remote(num_cpus=2)
class Importer:
    def imports(self) -> tuple:
        import os

        start = time.perf_counter()
        import deployments.engines.flux  # noqa: F401

        return round(time.perf_counter() - start, 2), os.environ.get("OMP_NUM_THREADS"), "sklearn" in sys.modules


ray.init(num_cpus=8, include_dashboard=False)
for _ in range(2):
    print("plain process:", round(plain(), 2), flush=True)
    actor = Importer.remote()
    print("ray actor (seconds, OMP_NUM_THREADS, sklearn imported):", ray.get(actor.imports.remote()), flush=True)
    ray.kill(actor)
ray.shutdown()
