# Session 20, call 1: precompiled cold, then warm starts on the same cache: new code (GC paused while importing +
# heap frozen), the same without scikit-learn, the previous commit's code (ff72ff4), plain diffusers.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
ROOT=$PWD; BASEPP=$PYTHONPATH; OLD=$ROOT/.gpu_diag/old; NOSK=$ROOT/.gpu_diag/nosk
python3 -c "import deployments.engines.flux" 2>/dev/null
(cd $OLD && PYTHONPATH=$OLD:$BASEPP python3 -c "import deployments.engines.flux, deployments.engines.random_models" 2>/dev/null)
PYTHONPATH=$NOSK:$BASEPP python3 -c "import sys, deployments.engines.flux; print('nosk: sklearn imported:', sys.modules.get('sklearn') is not None)" 2>&1 | grep nosk
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op'
S='^vortex\|^plain\|full garbage\|slowest first\|precompiled regions\|^start '
run() {  # name, dir, pythonpath, starts...
  local name=$1 dir=$2 pp=$3; shift 3
  echo "=== $name (elapsed $SECONDS)"
  (cd $dir && PYTHONPATH=$pp timeout 300 python3 -m benchmarks.replica_start --compile precompiled --starts "$@" --cache-dir /tmp/vortex-cc --timeout-s 290 --out $OUT/$name.json 2>&1) | grep -v -i "$F" > $OUT/$name.txt
  grep "$S" $OUT/$name.txt
}
run cold $ROOT $BASEPP cold
run warm-new $ROOT $BASEPP warm
run warm-new-nosk $ROOT $NOSK:$BASEPP warm
run warm-old $OLD $OLD:$BASEPP warm
run diffusers-nosk $ROOT $NOSK:$BASEPP diffusers
[ $SECONDS -lt 500 ] && run warm-new-nosk2 $ROOT $NOSK:$BASEPP warm
echo "elapsed $SECONDS"
PYTHONPATH=$NOSK:$BASEPP python3 -X importtime -c "import deployments.engines.flux" 2> /tmp/it.txt; awk -F'|' '{split($1,a,":"); print a[2], $3}' /tmp/it.txt | sort -n -r | head -30 > $OUT/importtime-nosk.txt
echo "elapsed $SECONDS"
