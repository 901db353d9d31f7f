# Session 26, call A (fresh H200): no cold start: .gpu_diag/regions-and-best-configs.tar.xz (session 25's regions and
# inductor's autotuning results, for the commit they were saved by and any later one that leaves precompiled.py, the
# fp8 layer and the versions alone) unpacked into /tmp/vortex-cc. Warm starts, alternating: the copy of HEAD as HEAD
# (env unset) and capturing without eager calls or replays in the warm-up (capture-only); every start's first
# requests' images checksummed. Then HEAD under stack_sampler.py (where the warm-up's main thread waits).
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -c "import deployments.engines.flux" 2>/dev/null
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
mkdir -p /tmp/vortex-cc && tar xJf .gpu_diag/regions-and-best-configs.tar.xz -C /tmp/vortex-cc && echo "regions unpacked"
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op'
S='^vortex\|slowest\|precompiled regions\|^start \|peak reserved\|captures\|warm start\|Error\|failed'
V=$PWD/.gpu_diag/variants/captureonly
run() {  # name, VORTEX_DIAG_SKIP_EAGER
  echo "=== $1 (elapsed $SECONDS)"
  (cd $V && VORTEX_DIAG_SKIP_EAGER=$2 PYTHONPATH=$V:$PYTHONPATH timeout 90 python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm --cache-dir /tmp/vortex-cc --timeout-s 85 --out $OUT/$1.json 2>&1) | grep -v -i "$F" > /tmp/$1.txt
  grep "$S" /tmp/$1.txt | cut -c1-300
}
run head 0
grep -q "'compiled': 0" /tmp/head.txt || { echo "the regions do not fit this commit: stop"; exit 1; }
echo "=== plain diffusers from the same folder, the baseline (elapsed $SECONDS)"
timeout 90 python3 -m benchmarks.replica_start --model /tmp/ckpt --starts diffusers --timeout-s 85 --out /tmp/diffusers.json 2>&1 | grep "^plain" | tee $OUT/diffusers.txt
run conly capture-only
run head2 0
run conly2 capture-only
python3 - $OUT <<'PY'
import json, sys, pathlib
runs = {p.stem: json.loads(p.read_text())["results"][0] for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json"))}
ref = runs["head"]["checksums"]
for name, r in runs.items():
    same = sum(r["checksums"][k] == v for k, v in ref.items())
    caps = {k: round(v, 2) for k, v in r["capture_s"].items()}
    print(name, "imports %.1f load %.1f warm-up %.1f ready %.1f" % (r["imports_s"], r["load_s"], r["warmup_s"], r["ready_s"]),
          caps, "regions", r["precompiled_regions"], "peak %.2f" % r["peak_reserved_gib"], "autotuning",
          r["dynamo_s"].get("CachingAutotuner.benchmark_all_configs", 0), "requests compiled/captured",
          r["compiled_on_requests"], r["captured_on_requests"], "checksums equal to head's:", same, "of", len(ref))
PY
if [ $SECONDS -lt 420 ]; then
  echo "=== sampled HEAD start (elapsed $SECONDS)"
  timeout 80 python3 .gpu_diag/stack_sampler.py $OUT/sampled.txt -m benchmarks.replica_start --child warm --cache-dir /tmp/vortex-cc --model /tmp/ckpt 2>&1 | grep RESULT | cut -c1-400
fi
echo "elapsed $SECONDS"
