"""One-off: the fp8 profile through `serve deploy` on one GPU with a warm compile cache, one generator replica
(no autoscaling, no load); kill it N times and read how long each replacement took, as Serve's controller and the
replica's own log lines time it. Usage: python serve_restarts.py FLUX_JSON N OUT.json [--rehearse] [--settle-s S]

--settle-s: wait S seconds between starting the cluster and deploying, so that workers Ray prestarts at a raylet's
start (RAY_enable_worker_prestart=1; with RAY_preload_python_modules they import those modules first) are idle by
then. The replica lines say whether a replica found its imports done ("Imported the engine ... in 0.0 s")."""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray
import yaml

from benchmarks.vram_placement import (
    application,
    controller_lines,
    generator_starts,
    placement_config,
    restart_generator,
    serve_errors,
    start_cluster,
    wait_until,
)

flux, restarts, out = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rehearse = "--rehearse" in sys.argv
settle_s = float(sys.argv[sys.argv.index("--settle-s") + 1]) if "--settle-s" in sys.argv else 0.0
cluster = start_cluster(1, rehearse)
time.sleep(settle_s)
idle = subprocess.run(["pgrep", "-f", "ray::IDLE"], capture_output=True, text=True).stdout.split()
print(f"idle Ray workers after {settle_s:.0f} s: {len(idle)}", flush=True)
if not rehearse:  # do idle workers that imported the engine hold GPU memory (a CUDA context each)?
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"]
    print("GPU processes:", subprocess.run(query, capture_output=True, text=True).stdout.strip() or "none", flush=True)
ray.init(address=cluster.address)
try:
    dashboard = cluster.webui_url
    config = placement_config(rehearse, 13 if rehearse else 56, None if rehearse else flux)
    generator = next(d for d in config["applications"][0]["deployments"] if d["name"] == "FluxGenerator")
    generator.pop("autoscaling_config")
    generator["num_replicas"] = 1
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config_file:
        yaml.safe_dump(config, config_file)
    subprocess.run(
        [sys.executable, "-m", "ray.serve.scripts", "deploy", config_file.name, "--address", f"http://{dashboard}"],
        check=True,
    )
    try:
        wait_until(lambda: application(dashboard).get("status") == "RUNNING", 400, "the application is not RUNNING")
    except TimeoutError:
        print(serve_errors(dashboard), flush=True)
        raise
    kills = []
    for _ in range(restarts):
        time.sleep(3)
        kills.append(restart_generator(dashboard))
        print("restart:", kills[-1], flush=True)
    logs = Path(cluster.head_node.get_session_dir_path()) / "logs/serve"
    starts = generator_starts(controller_lines(logs))
    for start in starts:
        print("start:", start, flush=True)
    own = [
        line.split(" -- ")[0][5:28] + " " + line.split(" -- ")[0].split()[-1] + " " + line.split(" -- ")[-1][:110]
        for path in sorted(logs.glob("replica_vortex_FluxGenerator_*.log"))
        for line in path.read_text().splitlines()
        if "Imported the engine" in line or "Loaded Flux" in line or "Warmed up" in line or "Precompiled" in line
    ]
    print("\n".join(own), flush=True)
    Path(out).write_text(json.dumps({"restarts": kills, "starts": starts, "replica_lines": own}, indent=2))
finally:
    ray.shutdown()
    cluster.shutdown()
