set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -c "import deployments.engines.flux" 2>/dev/null
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op'
timeout 460 python3 -m benchmarks.replica_start --compile precompiled --starts cold --cache-dir /tmp/vortex-cc --timeout-s 450 --out $OUT/cold.json 2>&1 | grep -v -i "$F" | tee $OUT/cold.txt | grep -v "^RESULT" | tail -12
find /tmp/vortex-cc/vortex-regions -name "*.bin" | wc -l > $OUT/regions.txt; du -sh /tmp/vortex-cc/vortex-regions >> $OUT/regions.txt; find /tmp/vortex-cc -name "*.best_config" | wc -l >> $OUT/regions.txt; cat $OUT/regions.txt
echo "elapsed $SECONDS"
timeout $((590-SECONDS)) python3 -m benchmarks.replica_start --compile precompiled --starts warm diffusers --cache-dir /tmp/vortex-cc --timeout-s $((580-SECONDS)) --out $OUT/warm.json 2>&1 | grep -v -i "$F" | tee $OUT/warm.txt | grep -v "^RESULT" | tail -14
echo "elapsed $SECONDS"
if [ $SECONDS -lt 520 ]; then FULL=1 CC=/tmp/vortex-cc timeout $((595-SECONDS)) python3 benchmarks/results/2026-12-01-h200-precompiled-warm-start/run6-load-callers/warm_diag.py profile 2>&1 | grep -v -i "$F" > $OUT/profile.txt; head -3 $OUT/profile.txt; fi
echo "elapsed $SECONDS"
