# Session 25, call A (fresh H200): the checkpoint; a cold start of HEAD (fills /tmp/vortex-cc); a warm start from a
# folder holding only vortex-regions (can the regions alone be carried to a fresh host?); the regions folder back as
# tar.xz if under 16 MB; a warm start under stack_sampler.py (where the warm-up's main thread goes); then warm
# starts of HEAD as the 600 s allow (likely none after a cold start). Results go straight to $OUT.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -c "import deployments.engines.flux" 2>/dev/null
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op'
S='^vortex\|^plain\|slowest\|precompiled regions\|^start \|peak reserved\|captures\|warm start\|Error\|failed'
timeout 400 python3 -m benchmarks.replica_start --model /tmp/ckpt --starts cold --cache-dir /tmp/vortex-cc --timeout-s 395 --out $OUT/cold.json 2>&1 | grep -v -i "$F" > $OUT/cold.txt; grep "$S" $OUT/cold.txt
tar cJf /tmp/regions.tar.xz -C /tmp/vortex-cc vortex-regions && ls -la /tmp/regions.tar.xz
[ $(stat -c %s /tmp/regions.tar.xz) -lt 16000000 ] && cp /tmp/regions.tar.xz $OUT/
run() {  # name, cache folder
  echo "=== $1 (elapsed $SECONDS)"
  timeout 90 python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm --cache-dir $2 --timeout-s 85 --out $OUT/$1.json 2>&1 | grep -v -i "$F" > $OUT/$1.txt
  grep "$S" $OUT/$1.txt | cut -c1-300
}
mkdir -p /tmp/vortex-cc2 && cp -r /tmp/vortex-cc/vortex-regions /tmp/vortex-cc2/
run warm-regions-only /tmp/vortex-cc2
if [ $SECONDS -lt 520 ]; then
  echo "=== sampled warm start (elapsed $SECONDS)"
  timeout 80 python3 .gpu_diag/stack_sampler.py $OUT/sampled.txt -m benchmarks.replica_start --child warm --cache-dir /tmp/vortex-cc --model /tmp/ckpt 2>&1 | grep RESULT | cut -c1-400
fi
for i in 1 2; do
  [ $SECONDS -lt 530 ] || break
  run warm-$i /tmp/vortex-cc
done
echo "elapsed $SECONDS"
