# Session 25, call B (fresh H200): the regions call A saved (unpacked, no cold start); warm process starts of a copy of
# HEAD whose CUDA graph runner may capture without the eager call before each capture (only each runner's first capture
# keeps it): VORTEX_DIAG_SKIP_EAGER=0 (as HEAD) and =1, alternating; each records checksums of its first requests' images.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -c "import deployments.engines.flux" 2>/dev/null
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
mkdir -p /tmp/vortex-cc && tar xJf .gpu_diag/regions.tar.xz -C /tmp/vortex-cc && echo "regions unpacked"
F='warn\|^$\|This call originates\|File "/tmp/site\|if dtype ==\|reduce_op'
S='^vortex\|^plain\|slowest\|precompiled regions\|^start \|peak reserved\|captures\|warm start\|Error\|failed'
V=$PWD/.gpu_diag/variants/skip
run() {  # name, skip
  echo "=== $1 (elapsed $SECONDS)"
  (cd $V && VORTEX_DIAG_SKIP_EAGER=$2 PYTHONPATH=$V:$PYTHONPATH timeout 90 python3 -m benchmarks.replica_start --model /tmp/ckpt --starts warm --cache-dir /tmp/vortex-cc --timeout-s 85 --out $OUT/$1.json 2>&1) | grep -v -i "$F" > $OUT/$1.txt
  grep "$S" $OUT/$1.txt | cut -c1-300
}
for name in skip1 skip0 skip1b skip0b skip1c; do
  [ $SECONDS -lt 500 ] || break
  case $name in skip1*) run $name 1 ;; *) run $name 0 ;; esac
done
python3 - $OUT <<'PY'
import json, sys, pathlib
runs = {p.stem: json.loads(p.read_text())["results"][0] for p in sorted(pathlib.Path(sys.argv[1]).glob("skip*.json"))}
ref = next((r["checksums"] for n, r in runs.items() if n.startswith("skip0")), None)
for name, r in runs.items():
    same = None if ref is None else sum(r["checksums"][k] == v for k, v in ref.items())
    diff = None if ref is None else max(abs(r["checksums"][k][0] - v[0]) for k, v in ref.items())
    caps = {k: round(v, 2) for k, v in r["capture_s"].items()}
    print(name, "imports %.1f load %.1f warm-up %.1f ready %.1f" % (r["imports_s"], r["load_s"], r["warmup_s"], r["ready_s"]),
          caps, "peak %.2f" % r["peak_reserved_gib"], "requests compiled/captured", r["compiled_on_requests"], r["captured_on_requests"],
          "checksums equal to skip0:", same, "of", len(r["checksums"]), "max |sum diff|", diff)
PY
echo "elapsed $SECONDS"
