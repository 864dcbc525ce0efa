#!/usr/bin/env bash
# `make bench [AREA=NAME]`: run every benchmark area, or one. Each measure prints a line
# `BENCH <area> <measure> key=value ...`. Comparisons run in the same invocation. An area
# that fails is named at the end and fails the run, after every other area has run.
set -euo pipefail
cd "$(dirname "$0")/.."
areas=(runtime supervisor api scheduler network images agent proxy autoscaling services controllers scale)
want=${1:-}
if [ -n "$want" ] && [[ ! " ${areas[*]} " =~ " $want " ]]; then
    echo "make bench: unknown area '$want' (one of: ${areas[*]})" >&2
    exit 2
fi
failed=()
for area in "${areas[@]}"; do
    [ -z "$want" ] || [ "$want" = "$area" ] || continue
    script="scripts/bench/$area.sh"
    if [ ! -f "$script" ]; then
        echo "make bench: area '$area' has no benchmark yet"
    elif ! bash "$script"; then
        echo "make bench: area '$area' failed (above); going on with the others" >&2
        failed+=("$area")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "make bench: failed areas: ${failed[*]}" >&2
    exit 1
fi
