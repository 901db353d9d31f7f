"""One-off: the fp8 profile through `serve deploy` on one GPU with a warm compile cache, one generator replica
(no autoscaling, no load); kill it N times and read how long each replacement took, as Serve's controller and the
replica's own log lines time it. Usage: python serve_restarts.py FLUX_JSON N OUT.json [--rehearse]"""

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
cluster = start_cluster(1, rehearse)
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
