# Session 24, call D (fresh H200, 42b9832): checkpoint; a cold start (the fp8 scales' strides changed, so the regions
# are new); then warm starts: HEAD, nopreload (must find HEAD's regions: no compile), restore (switch interval back to
# 5 ms at the load's end), HEAD again, as the 600 s allow. Each result goes straight to $OUT (a timeout keeps them).
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
run() {  # name, dir
  echo "=== $1 (elapsed $SECONDS)"
  (cd $2 && PYTHONPATH=$2:$PYTHONPATH timeout 90 python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm --cache-dir /tmp/vortex-cc --timeout-s 85 --out $OUT/$1.json 2>&1) | grep -v -i "$F" > $OUT/$1.txt
  grep "$S" $OUT/$1.txt | cut -c1-300
}
ROOT=$PWD
V=$ROOT/.gpu_diag/variants
for name in head nopreload restore head2 restore2; do
  [ $SECONDS -lt 540 ] || break
  case $name in head*) run warm-$name $ROOT ;; *) run warm-$name $V/${name%2} ;; esac
done
echo "elapsed $SECONDS"
