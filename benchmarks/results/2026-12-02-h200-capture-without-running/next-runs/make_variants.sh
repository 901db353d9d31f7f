#!/bin/bash
# Next GPU session: .gpu_diag/variants/recover = HEAD + cabe82f (captures without running, reverted in 89479d2) +
# recover.diff (after a failed capture, end the allocator's routing to the graphs' pool by hand: torch's private
# _cuda_endAllocateToPool). Run from the repository root.
set -e
cd "$(git rev-parse --show-toplevel)"
N=benchmarks/results/2026-12-02-h200-capture-without-running/next-runs
V=.gpu_diag/variants
rm -rf $V/recover && mkdir -p $V/recover
git archive HEAD deployments benchmarks/*.py configs pyproject.toml tests | tar -x -C $V/recover
git show cabe82f -- deployments tests | (cd $V/recover && patch -p1 -s)
(cd $V/recover && patch -p1 -s < ../../../$N/recover.diff)
sed -n '/^--- a\/benchmarks\/replica_start.py/,$p' benchmarks/results/2026-12-02-h200-capture-without-running/call-a/captureonly.diff | (cd $V/recover && patch -p1 -s)
grep -c "_cuda_endAllocateToPool\|checksums\[" $V/recover/deployments/engines/cuda_graphs.py $V/recover/benchmarks/replica_start.py
cp $N/run-s27a.sh .gpu_diag/
cp benchmarks/results/2026-12-02-h200-capture-without-running/call-a/head.json .gpu_diag/s26a-head.json
