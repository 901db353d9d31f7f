# Run .gpu_diag/make_variants.sh at HEAD first. Session 24, call A (fresh H200): checkpoint on local disk; a cold process start (fills /tmp/vortex-cc); the regions
# folder's size (and a copy back, if small enough to carry to later hosts); one warm start under the stack sampler
# (where the main and prefetch threads spend the start); then warm starts alternating HEAD and the variants of
# make_variants.sh (nopreload, preload5ms, switch; noprefetch is built too) as time allows. Call B continues the alternation on this host.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -c "import deployments.engines.flux" 2>/dev/null
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op'
S='^vortex\|^plain\|slowest\|precompiled regions\|^start \|peak reserved\|captures\|warm start'
timeout 390 python3 -m benchmarks.replica_start --model /tmp/ckpt --starts cold --cache-dir /tmp/vortex-cc --timeout-s 385 --out $OUT/cold.json 2>&1 | grep -v -i "$F" > $OUT/cold.txt; grep "$S" $OUT/cold.txt
echo "elapsed $SECONDS"
du -sh /tmp/vortex-cc/* /tmp/vortex-cc/vortex-regions/* 2>&1 | tee $OUT/cache_sizes.txt
tar cJf /tmp/regions.tar.xz -C /tmp/vortex-cc vortex-regions && ls -la /tmp/regions.tar.xz
[ $(stat -c %s /tmp/regions.tar.xz) -lt 16000000 ] && cp /tmp/regions.tar.xz $OUT/
echo "=== sampled warm start (elapsed $SECONDS)"
timeout 100 python3 .gpu_diag/stack_sampler.py $OUT/sampled.txt -m benchmarks.replica_start --child warm --cache-dir /tmp/vortex-cc --model /tmp/ckpt 2>&1 | grep RESULT | cut -c1-400
run() {  # name, dir
  echo "=== $1 (elapsed $SECONDS)"
  (cd $2 && PYTHONPATH=$2:$PYTHONPATH timeout 100 python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm --cache-dir /tmp/vortex-cc --timeout-s 95 --out $OUT/$1.json 2>&1) | grep -v -i "$F" > $OUT/$1.txt
  grep "$S" $OUT/$1.txt
}
ROOT=$PWD
V=$ROOT/.gpu_diag/variants
# does the regions folder alone make a start warm (so that it can be carried to the next fresh host)?
mkdir -p /tmp/vortex-cc2 && cp -r /tmp/vortex-cc/vortex-regions /tmp/vortex-cc2/
echo "=== regions folder only (elapsed $SECONDS)"
timeout 100 python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm --cache-dir /tmp/vortex-cc2 --timeout-s 95 --out $OUT/warm-a-regions-only.json 2>&1 | grep -v -i "$F" > $OUT/warm-a-regions-only.txt; grep "$S" $OUT/warm-a-regions-only.txt
for name in head nopreload preload5ms switch; do
  [ $SECONDS -lt 555 ] || break
  if [ $name = head ]; then run warm-a-$name $ROOT; else run warm-a-$name $V/$name; fi
done
echo "elapsed $SECONDS"
(cd $OUT && tar czf starts-a.tgz warm-* && rm -f warm-*)
