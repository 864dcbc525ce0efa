#!/usr/bin/env bash
# The README's Quickstart as a test: every line of its first ```sh block after `make run`
# runs in one shell (so `pod=$(…)` and the exports carry on), against the cluster `make run`
# started, with the binaries of $TUG_BIN_DIR. A line must succeed; its comment, when it shows
# output, must match: a header (`# NAME  READY …`: a line's first words), a result
# (`# deployment.apps/web unchanged`: in the output) or a line of text (`# <h1>…`: in the
# output). Lines marked "(interactive)" or "(needs …)" are skipped, and `make run` itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${TUG_BIN_DIR:?}
script=$(mktemp /tmp/tug-quickstart.XXXXXX)
trap 'rm -f "$script"' EXIT
python3 - "$bin" > "$script" <<'PY'
import re, shlex, sys
bin_dir = sys.argv[1]
text = open("README.md").read()
block = text.split("## Quickstart", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
print("set -uo pipefail")
print("fails=0; ran=0")
for raw in block.strip().splitlines():
    line, _, comment = raw.partition("  #")
    line, comment = line.strip(), comment.strip()
    if not line or line.startswith("make run") or "(interactive)" in comment or "(needs" in comment:
        continue
    if line.startswith("export PATH="):
        line = f"export PATH={bin_dir}:$PATH"
    expect, kind = "", ""
    if re.match(r"^[A-Z][A-Z()-]*(\s+[A-Z][A-Z()-]*)+", comment):
        kind, expect = "header", " ".join(comment.split())
    elif re.match(r"^[a-z.]+/[a-z0-9-]+ [a-z]+$", comment) or comment.startswith("<"):
        kind, expect = "contains", comment.rstrip(":")
    # A line that reads what the cluster has yet to produce (top's first samples) gets a
    # few more tries, as a user would run it again.
    print(f"ran=$((ran + 1)); for try in $(seq 30); do out=$( {line} 2>&1 ); rc=$?; [ $rc -eq 0 ] && break; sleep 2; done")
    print(f'if [ $rc -ne 0 ]; then echo "quickstart: FAILED (exit $rc): {line}"; echo "$out" | sed "s/^/    /"; fails=$((fails + 1)); fi')
    if line.startswith(("export ", "pod=")):
        # An assignment must take effect in this shell, not the subshell above.
        print(line)
    if kind == "header":
        print(f'grep -q ^{shlex.quote(expect)} <<<"$(tr -s " " <<<"$out")" || {{ echo "quickstart: FAILED: {line}: no header {expect} in: $out"; fails=$((fails + 1)); }}')
    elif kind == "contains":
        print(f'case "$out" in *{shlex.quote(expect)}*) ;; *) echo "quickstart: FAILED: {line}: no {expect} in: $out"; fails=$((fails + 1));; esac')
print('echo "quickstart: $ran lines run, $fails failed"')
print('[ $fails -eq 0 ]')
PY
TUG_SOCKET=/run/tug/tug.sock bash "$script"
