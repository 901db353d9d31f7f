set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
D=$(python3 -c "import torch,os;print(os.path.dirname(torch.__file__))")
tar czf $OUT/torchsrc.tgz -C $D _inductor/runtime/triton_heuristics.py _inductor/runtime/autotune_cache.py _inductor/async_compile.py _inductor/triton_bundler.py _inductor/codecache.py
python3 -c "import deployments.engines.flux" 2>/dev/null
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op\|isinstance(obj'
run() { echo "=== $1 $2 ($SECONDS s)"; timeout 150 python3 benchmarks/results/2026-12-01-h200-precompiled-warm-start/run5-autotune-diag/autotune_diag.py $2 2>&1 | grep -v -i "$F" > $OUT/$1-$2.txt; grep -v "^example\|^miss example" $OUT/$1-$2.txt | tail -14; }
run A cold; run A warm
f=$(find /tmp/vat -name "*.best_config" | head -1); find /tmp/vat -name "*.best_config" | wc -l; cat "$f"; echo
rm -rf /tmp/vat
export TORCHINDUCTOR_DYNAMIC_SCALE_RBLOCK=0; run B cold; run B warm; unset TORCHINDUCTOR_DYNAMIC_SCALE_RBLOCK
rm -rf /tmp/vat
run C cold-run-first; run C warm
echo "elapsed $SECONDS"
