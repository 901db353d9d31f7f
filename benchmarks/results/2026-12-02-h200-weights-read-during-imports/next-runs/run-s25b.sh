# Session 25, call B (fresh H200): Serve's warm starts of HEAD with the weights on local disk (the first replica, then
# the replacement of a killed one), after a cold fill, or after unpacking .gpu_diag/regions.tar.xz (call A's regions
# folder, when it came back and a regions-only folder started warm) into the cache.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -c "import deployments.engines.flux, ray.serve" 2>/dev/null
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op'
S='^vortex\|^plain\|slowest\|precompiled regions\|^start \|peak reserved\|captures\|warm start'
if [ -f .gpu_diag/regions.tar.xz ]; then
  mkdir -p /tmp/vortex-cc && tar xJf .gpu_diag/regions.tar.xz -C /tmp/vortex-cc && echo "regions unpacked"
  STARTS=warm
else
  STARTS=cold
fi
timeout 390 python3 -m benchmarks.replica_start --model /tmp/ckpt --starts $STARTS --cache-dir /tmp/vortex-cc --timeout-s 385 --out $OUT/$STARTS.json 2>&1 | grep -v -i "$F" > $OUT/$STARTS.txt; grep "$S" $OUT/$STARTS.txt
echo "elapsed $SECONDS"
FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 20, "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "/tmp/vortex-cc"}'
timeout $((585-SECONDS)) python3 .gpu_diag/serve_restarts.py "$FLUX" 2 $OUT/serve_restarts.json 2>&1 | grep -v -i "$F" > $OUT/serve_restarts.txt
echo "rc $? elapsed $SECONDS"
grep "restart:\|start:\|Imported\|Loaded\|Warmed\|Precompiled\|Error" $OUT/serve_restarts.txt | cut -c1-300
