# Session 22, call C (fresh H200): the checkpoint on local disk, then where its load goes: plain diffusers (to the
# CPU then .to(cuda), and device_map="cuda"), the previous commit's fp8 load (QKV fused on the CPU) and this
# commit's (each block moved, fused and quantized on the GPU); each twice, alternating, in fresh processes.
set -o pipefail
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -c "import deployments.engines.flux" 2>/dev/null
S0=$SECONDS
python3 -m deployments.engines.random_models /tmp/ckpt 2>&1 | tail -1
echo "checkpoint saved in $((SECONDS-S0)) s"
ROOT=$PWD
for i in 1 2; do
  for mode in vortex-new vortex-old diffusers diffusers-device-map; do
    case $mode in vortex-old) P=$ROOT/.gpu_diag/oldload; m=vortex;; vortex-new) P=$ROOT; m=vortex;; *) P=$ROOT; m=$mode;; esac
    echo "== $mode $i (elapsed $SECONDS)"
    PYTHONPATH=$P:$PYTHONPATH timeout 120 python3 .gpu_diag/load_phases.py $m /tmp/ckpt 2>&1 | grep -v -i "warn\|^$\|Loading\|it/s\]" | tail -3
  done
done 2>&1 | tee $OUT/load_phases.txt
echo "elapsed $SECONDS"
