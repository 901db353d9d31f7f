# Session 21, call A (~590 s, fresh H200): the fp8 profile (precompiled) through serve deploy, scikit-learn hidden
# from every process (as in an image built from pyproject.toml): its first replica cold (fills /tmp/vortex-cc), the
# autoscaled one, then a killed replica's replacement (a restart on its own card). Then warm process starts,
# alternating this commit (regions prefetched on a thread) and the same code without the prefetch, while time remains.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
ROOT=$PWD; NOPF=$ROOT/.gpu_diag/noprefetch
export PYTHONPATH=$ROOT/.gpu_diag/nosk:$PYTHONPATH
python3 -c "import sys, deployments.engines.flux; print('sklearn imported:', sys.modules.get('sklearn') is not None)" 2>&1 | tail -1
(cd $NOPF && PYTHONPATH=$NOPF:$PYTHONPATH python3 -c "import deployments.engines.flux" 2>/dev/null)
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op'
FLUX='{"precision": "fp8", "fuse_qkv": true, "compile": "precompiled", "cuda_graphs": 20, "random_weights": "full", "compile_cache_dir": "/tmp/vortex-cc"}'
timeout 500 python3 -m benchmarks.vram_placement --hold-s 10 --flux "$FLUX" --out $OUT/vram_placement.json 2>&1 | grep -v -i "$F" > $OUT/vram_placement.txt
echo "rc $? elapsed $SECONDS"
grep -v "^(" $OUT/vram_placement.txt | grep -v "^\s*$" | tail -22
(cd /tmp/ray/session_latest/logs/serve && grep -h "Loaded Flux\|Warmed up\|Precompiled regions" replica_vortex_FluxGenerator_*.log | cut -c1-260 > $OUT/replica-starts.txt)
cut -c1-200 $OUT/replica-starts.txt
S='^vortex\|^plain\|slowest first\|precompiled regions\|^start '
run() {  # name, dir
  echo "=== $1 (elapsed $SECONDS)"
  (cd $2 && PYTHONPATH=$2:$PYTHONPATH timeout 70 python3 -m benchmarks.replica_start --starts warm --cache-dir /tmp/vortex-cc --timeout-s 65 --out $OUT/$1.json 2>&1) | grep -v -i "$F" > $OUT/$1.txt
  grep "$S" $OUT/$1.txt
}
i=0
while [ $SECONDS -lt 520 ]; do
  i=$((i+1)); run warm-prefetch$i $ROOT
  [ $SECONDS -lt 540 ] && run warm-noprefetch$i $NOPF
done
echo "elapsed $SECONDS"
