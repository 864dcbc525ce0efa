#!/usr/bin/env bash
# `make bench [AREA=NAME]`: run every benchmark area, or one. Each measure prints a line
# `BENCH <area> <measure> key=value ...`. Comparisons run in the same invocation.
set -euo pipefail
cd "$(dirname "$0")/.."
areas=(runtime supervisor api scheduler network images agent proxy)
want=${1:-}
if [ -n "$want" ] && [[ ! " ${areas[*]} " =~ " $want " ]]; then
    echo "make bench: unknown area '$want' (one of: ${areas[*]})" >&2
    exit 2
fi
for area in "${areas[@]}"; do
    [ -z "$want" ] || [ "$want" = "$area" ] || continue
    script="scripts/bench/$area.sh"
    if [ -f "$script" ]; then
        bash "$script"
    else
        echo "make bench: area '$area' has no benchmark yet"
    fi
done
