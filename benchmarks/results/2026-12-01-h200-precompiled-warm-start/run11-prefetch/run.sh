# Session 21, call B (~590 s, fresh H200): imports in a plain process against a Ray actor; then a cold process
# start filling /tmp/vortex-cc; then warm process starts alternating this commit (regions prefetched on a thread)
# and the same code without the prefetch. scikit-learn hidden from every process.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
ROOT=$PWD; NOPF=$ROOT/.gpu_diag/noprefetch
export PYTHONPATH=$ROOT/.gpu_diag/nosk:$PYTHONPATH
python3 -c "import sys, deployments.engines.flux; print('sklearn imported:', sys.modules.get('sklearn') is not None)" 2>&1 | tail -1
(cd $NOPF && PYTHONPATH=$NOPF:$PYTHONPATH python3 -c "import deployments.engines.flux" 2>/dev/null)
timeout 80 python3 .gpu_diag/ray_imports.py 2>&1 | grep "plain\|actor" | tee $OUT/ray_imports.txt
echo "elapsed $SECONDS"
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op'
S='^vortex\|^plain\|slowest first\|precompiled regions\|^start '
timeout 400 python3 -m benchmarks.replica_start --starts cold --cache-dir /tmp/vortex-cc --timeout-s 390 --out $OUT/cold.json 2>&1 | grep -v -i "$F" > $OUT/cold.txt; grep "$S" $OUT/cold.txt
run() {  # name, dir
  echo "=== $1 (elapsed $SECONDS)"
  (cd $2 && PYTHONPATH=$2:$PYTHONPATH timeout 60 python3 -m benchmarks.replica_start --starts warm --cache-dir /tmp/vortex-cc --timeout-s 55 --out $OUT/$1.json 2>&1) | grep -v -i "$F" > $OUT/$1.txt
  grep "$S" $OUT/$1.txt
}
i=0
while [ $SECONDS -lt 510 ]; do
  i=$((i+1)); run warm-prefetch$i $ROOT
  [ $SECONDS -lt 545 ] && run warm-noprefetch$i $NOPF
done
echo "elapsed $SECONDS"
(cd $OUT && tar czf starts.tgz cold.* warm-* && rm -f cold.* warm-*)
