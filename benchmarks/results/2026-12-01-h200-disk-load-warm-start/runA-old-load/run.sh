# Session 22, call A (fresh H200): a full-size random FLUX.1-schnell saved to local disk (/tmp/ckpt); a cold
# process start reading it (fills /tmp/vortex-cc); then a warm start and plain diffusers, both reading it.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -c "import deployments.engines.flux, ray.serve" 2>/dev/null
df -h /tmp | tail -1; free -g | head -2; nproc
echo "elapsed $SECONDS"
S0=$SECONDS
timeout 200 python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | grep -v -i warn | tail -2
echo "checkpoint saved in $((SECONDS-S0)) s"; du -sh /tmp/ckpt /tmp/ckpt/* | tee $OUT/ckpt.txt
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op'
S='^vortex\|^plain\|slowest\|precompiled regions\|^start \|peak reserved\|captures\|warm start'
timeout 400 python3 -m benchmarks.replica_start --model /tmp/ckpt --starts cold --cache-dir /tmp/vortex-cc --timeout-s 395 --out $OUT/cold.json 2>&1 | grep -v -i "$F" > $OUT/cold.txt; grep "$S" $OUT/cold.txt
echo "elapsed $SECONDS"
timeout $((585-SECONDS)) python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm diffusers --cache-dir /tmp/vortex-cc --timeout-s 120 --out $OUT/warm.json 2>&1 | grep -v -i "$F" > $OUT/warm.txt; grep "$S" $OUT/warm.txt
echo "elapsed $SECONDS"
