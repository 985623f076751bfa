#!/usr/bin/env bash
# run_case.sh OUTDIR -- CMD...: empties OUTDIR, then runs CMD (a test step that writes there).
set -euo pipefail
out=$1; shift
[ "$1" = "--" ] && shift
rm -rf "$out"
mkdir -p "$out"
exec "$@"
