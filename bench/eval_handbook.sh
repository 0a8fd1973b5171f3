#!/usr/bin/env bash
# Retrieval benchmark on the public handbook (not part of the test suite: it reads ../shared).
#
#   bench/eval_handbook.sh                      # all three modes, the report as a table
#   bench/eval_handbook.sh --json > report.json # any other `kb eval` options pass through
#
# HANDBOOK (default ../shared/corpora/handbook next to the repo) is ingested into its own index,
# KB_INDEX_DIR (default .kb-handbook), incrementally: re-runs only re-index what changed.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
handbook="${HANDBOOK:-$here/../shared/corpora/handbook}"
export KB_INDEX_DIR="${KB_INDEX_DIR:-$here/.kb-handbook}"
kb="${KB:-$here/.venv/bin/kb}"
[ -x "$kb" ] || kb=kb
if [ ! -d "$handbook" ]; then
  echo "error: no handbook at $handbook (set HANDBOOK=/path/to/handbook)" >&2
  exit 2
fi
"$kb" ingest "$handbook" >&2
exec "$kb" eval "$here/eval/handbook-gold.jsonl" "$@"
