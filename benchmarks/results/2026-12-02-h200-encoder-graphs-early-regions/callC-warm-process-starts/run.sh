# Session 23, call C (call B's host, still held): warm process starts alternating this commit and a copy without
# 1f6da1c (regions installed after the load, so their prefetch starts with the warm-up).
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
i=0
while [ $SECONDS -lt 230 ]; do
  i=$((i+1)); run warm-new$i $ROOT
  [ $SECONDS -lt 280 ] && run warm-noearly$i $ROOT/.gpu_diag/noearly
done
echo "elapsed $SECONDS"
(cd $OUT && tar czf starts.tgz warm-* && rm -f warm-*)
