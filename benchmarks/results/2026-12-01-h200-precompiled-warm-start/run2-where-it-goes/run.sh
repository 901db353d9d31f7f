set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype =='
for m in cold warm loadseq loadpar8 loadpar4 profile; do
  echo "=== $m (elapsed $SECONDS)"
  timeout 300 python3 benchmarks/results/2026-12-01-h200-precompiled-warm-start/run6-load-callers/warm_diag.py $m 2>&1 | grep -v -i "$F" | tee $OUT/$m.txt | head -150
done
