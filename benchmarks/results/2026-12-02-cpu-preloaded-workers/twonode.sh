cd /work/main
export RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 PYTHONPATH=/work/main
B=/work/main/.venv/bin
$B/ray start --head --num-cpus=3 --port=6392 --dashboard-port=8267 --disable-usage-stats > /tmp/reuse/head.txt 2>&1
echo "head rc $?"
RAY_enable_worker_prestart=1 RAY_preload_python_modules=deployments.engines.flux RAY_num_workers_soft_limit=8 RAY_idle_worker_killing_time_threshold_ms=3600000 $B/ray start --address=127.0.0.1:6392 --num-cpus=4 --resources='{"gen_node": 1}' --disable-usage-stats > /tmp/reuse/worker.txt 2>&1
echo "worker node rc $?"
sleep 40
echo "--- idle workers 40 s after (pid, age)"; ps -eo pid,etimes,rss,args | grep "ray::IDLE" | grep -v grep | cut -c1-60
T0=$(date +%s)
$B/serve deploy /tmp/reuse/twonode.yaml --address http://127.0.0.1:8267 2>&1 | tail -1
for i in $(seq 1 90); do curl -s -o /dev/null -w "%{http_code}" http://127.0.0.1:8000/readyz | grep -q 200 && break; sleep 2; done
echo "ready after $(( $(date +%s) - T0 )) s"
S=$(ls -td /tmp/ray/session_2* | head -1)
grep -h "Imported the engine\|Loaded Flux" $S/logs/serve/replica_vortex_FluxGenerator_*.log | cut -c1-160
ps -eo pid,etimes,args | grep "FluxGenerator\|ray::IDLE" | grep -v grep | cut -c1-80
echo "--- kill the generator replica"
$B/python - <<'PY'
import ray, time
ray.init(address="127.0.0.1:6392", namespace="serve", logging_level="ERROR")
from ray.util.state import list_actors
gen = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "FluxGenerator" in (a.class_name or "")]
print("killing", [(a.name, a.pid) for a in gen])
ray.kill(ray.get_actor(gen[0].name, namespace="serve"), no_restart=True)
PY
T1=$(date +%s)
for i in $(seq 1 120); do [ $(grep -h "started successfully" $S/logs/serve/controller_*.log | grep -c FluxGenerator) -ge 2 ] && break; sleep 1; done
echo "replacement started after $(( $(date +%s) - T1 )) s"
grep -h "Imported the engine\|Loaded Flux" $S/logs/serve/replica_vortex_FluxGenerator_*.log | cut -c1-160
ps -eo pid,etimes,args | grep "FluxGenerator\|ray::IDLE" | grep -v grep | cut -c1-80
grep -h "Starting\|Adding\|RUNNING\|started" $S/logs/serve/controller_*.log | grep -i fluxgen | cut -c1-200 | tail -8
sleep 10; ps -eo pid,etimes,args | grep "FluxGenerator\|ray::IDLE" | grep -v grep | cut -c1-80
$B/ray stop --force > /dev/null 2>&1
