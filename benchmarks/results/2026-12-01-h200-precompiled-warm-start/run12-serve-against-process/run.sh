# Session 21, call C (~470 s, fresh H200): on one host, the host as it is (scikit-learn installed): a cold process
# start filling /tmp/vortex-cc, a warm process start, then the profile through serve deploy (one generator, warm
# cache) with its replica killed twice: Serve's warm starts against the process's, same host, same cache.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -c "import deployments.engines.flux, ray.serve" 2>/dev/null
echo "elapsed $SECONDS"
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op'
S='^vortex\|^plain\|slowest first\|precompiled regions\|^start '
timeout 350 python3 -m benchmarks.replica_start --starts cold --cache-dir /tmp/vortex-cc --timeout-s 345 --out $OUT/cold.json 2>&1 | grep -v -i "$F" > $OUT/cold.txt; grep "$S" $OUT/cold.txt
echo "elapsed $SECONDS"
timeout 60 python3 -m benchmarks.replica_start --starts warm --cache-dir /tmp/vortex-cc --timeout-s 55 --out $OUT/warm.json 2>&1 | grep -v -i "$F" > $OUT/warm.txt; grep "$S" $OUT/warm.txt
echo "elapsed $SECONDS"
FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 20, "random_weights": "full", "compile_cache_dir": "/tmp/vortex-cc"}'
timeout $((540-SECONDS)) python3 .gpu_diag/serve_restarts.py "$FLUX" 1 $OUT/serve_restarts.json 2>&1 | grep -v -i "$F" > $OUT/serve_restarts.txt
echo "rc $? elapsed $SECONDS"
grep "restart:\|start:\|Imported\|Loaded\|Warmed\|Precompiled\|Error" $OUT/serve_restarts.txt | cut -c1-250
