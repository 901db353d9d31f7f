set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/card.txt
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op'
export SMALL=1 REGIONS_DIR=/tmp/vcc2
for m in cold warm profile; do echo "=== $m ($SECONDS s)"; timeout 200 python3 benchmarks/results/2026-12-01-h200-precompiled-warm-start/run6-load-callers/warm_diag.py $m 2>&1 | grep -v -i "$F" > $OUT/$m.txt; head -4 $OUT/$m.txt; done
echo "elapsed $SECONDS"
