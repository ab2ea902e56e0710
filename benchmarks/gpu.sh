#!/usr/bin/env bash
# The prepared GPU benchmark (benchmarks/gpu_bench.py): `lvpeft bench` on LLaVA-1.5-7B's architecture with
# random bfloat16 weights (sdpa), batch 1 and 16 (prefill, decode, generate) and serving (16 prompts x 64
# tokens), base vs LVPruning (keep 0.1) vs FastV-style; writes BENCHMARKS.md (+ BENCHMARKS.json), naming
# the device. Fits its plan into --budget-s (default 420 s) and stops at LIMIT_S (default 480 s = 8 min).
#
#   benchmarks/gpu.sh                                        # one GPU (cuda:0), from the repository root
#   benchmarks/gpu.sh --device cpu --tiny --out /tmp/B.md    # smoke run: a tiny model on a CPU, seconds
#
# Options: --device DEV (default cuda), --tiny, --out PATH (default: BENCHMARKS.md at the repository root),
# --budget-s S. Environment: PYTHON (default python), LIMIT_S.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"
limit="${LIMIT_S:-480}"
if command -v timeout >/dev/null 2>&1; then
  exec timeout --kill-after=20 "$limit" "$python" "$here/gpu_bench.py" "$@"
fi
exec "$python" "$here/gpu_bench.py" "$@"
