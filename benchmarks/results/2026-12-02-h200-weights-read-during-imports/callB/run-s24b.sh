# Session 24, call B (call A's host, still held): warm starts alternating HEAD and the variants.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
[ -d /tmp/vortex-cc ] || { echo "FRESH HOST: nothing to measure"; exit 1; }
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op'
S='^vortex\|^plain\|slowest\|precompiled regions\|^start \|peak reserved\|captures\|warm start'
run() {  # name, dir
  echo "=== $1 (elapsed $SECONDS)"
  (cd $2 && PYTHONPATH=$2:$PYTHONPATH timeout 100 python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm --cache-dir /tmp/vortex-cc --timeout-s 95 --out $OUT/$1.json 2>&1) | grep -v -i "$F" > $OUT/$1.txt
  grep "$S" $OUT/$1.txt
}
ROOT=$PWD
V=$ROOT/.gpu_diag/variants
i=0
while [ $SECONDS -lt ${LIMIT:-250} ]; do
  i=$((i+1))
  for name in head nopreload preload5ms switch; do
    if [ $name = head ]; then run warm-b$i-$name $ROOT; else run warm-b$i-$name $V/$name; fi
  done
done
echo "elapsed $SECONDS"
[ $SECONDS -lt 330 ] && timeout $((580-SECONDS)) python3 -m pytest -m gpu tests/test_flux_gpu_loading.py -k fp8 -x -q -s -p no:cacheprovider 2>&1 | grep "MEASURED\|passed\|failed\|Error" | tee $OUT/gpu_loading_fp8.txt
(cd $OUT && tar czf starts-b.tgz warm-* && rm -f warm-*)
