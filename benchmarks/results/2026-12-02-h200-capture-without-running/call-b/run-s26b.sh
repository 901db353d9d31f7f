# Session 26, call B (fresh H200): Serve's warm starts of HEAD (first replica, then two replacements of killed ones),
# weights on local disk, the regions and autotuning results unpacked: first as Ray starts workers (on demand, each
# importing the engine in its replica's constructor), then with RAY_enable_worker_prestart=1 and
# RAY_preload_python_modules=deployments.engines.flux (each raylet starts min(num_cpus, cores) workers at its start,
# each importing the engine before any replica is scheduled; CPU: benchmarks/results/2026-12-02-cpu-preloaded-workers/).
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -c "import deployments.engines.flux, ray.serve" 2>/dev/null
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
mkdir -p /tmp/vortex-cc && tar xJf .gpu_diag/regions-and-best-configs.tar.xz -C /tmp/vortex-cc && echo "regions unpacked"
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op\|kernels'
FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 20, "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "/tmp/vortex-cc"}'
serve_run() {  # name, settle seconds, [env assignments]
  echo "=== $1 (elapsed $SECONDS)"
  env "${@:3}" timeout 280 python3 .gpu_diag/serve_restarts.py "$FLUX" 2 $OUT/$1.json --settle-s $2 2>&1 | grep -v -i "$F" > /tmp/$1.txt
  echo "rc $? elapsed $SECONDS"
  grep "idle Ray\|GPU processes\|restart:\|start:\|Imported\|Loaded\|Warmed\|Precompiled\|Error" /tmp/$1.txt | cut -c1-300 | tee $OUT/$1_lines.txt
}
serve_run serve-plain 20
serve_run serve-preloaded 60 RAY_enable_worker_prestart=1 RAY_preload_python_modules=deployments.engines.flux PYTHONPATH=$PWD:$PYTHONPATH
echo "elapsed $SECONDS"
