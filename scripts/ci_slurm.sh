#!/usr/bin/env bash
# CI entry: bring up the throwaway SLURM cluster, then (optionally) run a command with the SLURM tests
# required, so that a broken cluster fails the run instead of silently skipping its tests.
#
#   bash scripts/ci_slurm.sh                          # only start the cluster (retries once from scratch)
#   bash scripts/ci_slurm.sh .venv/bin/pytest -q      # start it, then run the command with LANDSCAPE_REQUIRE_SLURM=1
#
# The cluster is left running; `bash scripts/slurm_cluster.sh down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
if ! bash scripts/slurm_cluster.sh up; then
    echo "[ci_slurm] first start failed; tearing down and retrying once" >&2
    bash scripts/slurm_cluster.sh down || true
    bash scripts/slurm_cluster.sh up
fi
echo "[ci_slurm] SLURM cluster ready after $(($(date +%s) - start)) s"

if [ "$#" -gt 0 ]; then
    LANDSCAPE_REQUIRE_SLURM=1 exec "$@"
fi
