#!/bin/bash
# Ran from benchmarks/results/2026-12-02-h200-regions-carried/next-runs/, whose files are now in call-a/ and call-b/ here.
# Session 26: the copy of HEAD that call A compares with HEAD (precompiled.py stays byte-identical: its source is in
# the regions' digest, so the copy finds the regions HEAD's start loads). Its CUDA graph runner captures each shape
# after the first without the eager call (VORTEX_DIAG_SKIP_EAGER=1: the capturing call's result from a replay;
# =capture-only: no replay, the warm-up gets the graph's unrun buffers); unset, it is HEAD. Its replica_start also
# records checksums of the first requests' images.
set -e
cd "$(git rev-parse --show-toplevel)"
N=benchmarks/results/2026-12-02-h200-regions-carried/next-runs
V=.gpu_diag/variants
rm -rf $V && mkdir -p $V/captureonly
git archive HEAD deployments benchmarks/*.py configs pyproject.toml | tar -x -C $V/captureonly
(cd $V/captureonly && patch -p1 -s < ../../../$N/captureonly.diff)
cmp deployments/engines/precompiled.py $V/captureonly/deployments/engines/precompiled.py
diff -r deployments $V/captureonly/deployments | grep -c '^[<>]'
cp $N/run-s26a.sh $N/run-s26b.sh $N/serve_restarts.py .gpu_diag/
cp benchmarks/results/2026-12-02-h200-weights-read-during-imports/next-runs/stack_sampler.py .gpu_diag/
