# Session 23, call B (fresh H200): the checkpoint on local disk; a cold process start reading it (fills
# /tmp/vortex-cc); Serve's warm starts reading it (the first replica, then the replacement of a killed one), with
# d16c4d7 (one graph per text encoder) and 1f6da1c (regions installed and prefetched during the load).
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -c "import deployments.engines.flux, ray.serve" 2>/dev/null
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op'
S='^vortex\|^plain\|slowest\|precompiled regions\|^start \|peak reserved\|captures\|warm start'
timeout 390 python3 -m benchmarks.replica_start --model /tmp/ckpt --starts cold --cache-dir /tmp/vortex-cc --timeout-s 385 --out $OUT/cold.json 2>&1 | grep -v -i "$F" > $OUT/cold.txt; grep "$S" $OUT/cold.txt
echo "elapsed $SECONDS"
FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 20, "model": "/tmp/ckpt", "offline": true, "compile_cache_dir": "/tmp/vortex-cc"}'
timeout $((585-SECONDS)) python3 .gpu_diag/serve_restarts.py "$FLUX" 1 $OUT/serve_restarts.json 2>&1 | grep -v -i "$F" > $OUT/serve_restarts.txt
echo "rc $? elapsed $SECONDS"
grep "restart:\|start:\|Imported\|Loaded\|Warmed\|Precompiled\|Error" $OUT/serve_restarts.txt | cut -c1-300
