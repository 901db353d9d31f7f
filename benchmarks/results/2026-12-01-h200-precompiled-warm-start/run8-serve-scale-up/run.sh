# Session 20, call 2: fill the precompiled cache (replica_start cold), then the fp8 profile through serve deploy on
# one H200 with that cache: scale-up decision -> the new replica's first answer, under load.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -c "import deployments.engines.flux" 2>/dev/null
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op'
timeout 340 python3 -m benchmarks.replica_start --compile precompiled --starts cold --cache-dir /tmp/vortex-cc --timeout-s 330 --out $OUT/cold.json 2>&1 | grep -v -i "$F" > $OUT/cold.txt; grep "^vortex\|full garbage" $OUT/cold.txt
echo "elapsed $SECONDS"
FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 20, "random_weights": "full", "compile_cache_dir": "/tmp/vortex-cc"}'
timeout $((590-SECONDS)) python3 -m benchmarks.vram_placement --hold-s 10 --flux "$FLUX" --out $OUT/vram_placement.json 2>&1 | grep -v -i "$F" > $OUT/vram_placement.txt
echo "rc $? elapsed $SECONDS"
grep -v "^(" $OUT/vram_placement.txt | tail -30
cd /tmp/ray/session_latest/logs/serve && grep -h "Loaded Flux\|Warmed up\|Precompiled regions" replica_vortex_FluxGenerator_*.log | cut -c1-400 | tee $OUT/replica-starts.txt
tar czf $OUT/serve-logs.tgz replica_vortex_FluxGenerator_*.log controller_*.log 2>/dev/null; echo "elapsed $SECONDS"
