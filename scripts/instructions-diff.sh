#!/usr/bin/env bash
# Where the instructions per call (or per streamed item) moved between two builds, function by
# function: what `scripts/instructions.sh` cannot say when its total moves. The compiler's
# inlining changes with code far from the call path, and a function it leaves out of line costs
# every call its own instructions and the moves of its state (a stream's item went from 384 to 407
# instructions so, the encoding of each item left in a function of its own).
#
#     scripts/instructions-diff.sh BEFORE AFTER [WORKLOAD] [SYSTEM] [SETUP]
#     cp target/release/rpc-bench /tmp/before     # then change the code, build again, and:
#     scripts/instructions-diff.sh /tmp/before target/release/rpc-bench stream
#
# BEFORE and AFTER are two `rpc-bench` binaries; WORKLOAD, SYSTEM and SETUP are as for
# `scripts/instructions.sh` (latency, rpc-core and cross-process by default). Prints both totals
# per call, then the functions whose own instructions (not counting those they call) moved most,
# both processes summed, with the count before and after. A function out of line in one build and
# inlined in the other shows as a function that appears or disappears, its work moving into its
# callers. Needs valgrind (`apt install valgrind`).
set -euo pipefail

before=${1:?usage: instructions-diff.sh BEFORE AFTER [WORKLOAD] [SYSTEM] [SETUP]}
after=${2:?usage: instructions-diff.sh BEFORE AFTER [WORKLOAD] [SYSTEM] [SETUP]}
workload=${3:-latency}
system=${4:-rpc-core}
setup=${5:-cross-process}
command -v valgrind >/dev/null || {
    echo "instructions-diff.sh: needs valgrind (apt install valgrind)" >&2
    exit 2
}
for bench in "$before" "$after"; do
    [[ -x $bench ]] || {
        echo "instructions-diff.sh: no rpc-bench to run at $bench" >&2
        exit 2
    }
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Counts one build under callgrind into $out/$1: each process's profile, and the count of calls
# or items the profile reports.
count() {
    local name=$1 bench=$2
    mkdir "$out/$name"
    valgrind --tool=callgrind --trace-children=yes \
        --callgrind-out-file="$out/$name/callgrind.%p.out" \
        "$bench" --profile "$workload" "$system" --setup "$setup" \
        >"$out/$name/report" 2>"$out/$name/valgrind"
    sed -n 's/.*(\([0-9]*\) \(calls\|items\))$/\1/p' "$out/$name/report" >"$out/$name/count"
    [[ -s $out/$name/count ]] || {
        echo "instructions-diff.sh: no count in $bench's report: $(cat "$out/$name/report")" >&2
        exit 1
    }
    # Each function's own instructions, both processes summed: "count<TAB>function". A line
    # reads "1,234 (0.05%)  file:function [binary]"; the file ends at the first colon.
    for profile in "$out/$name"/callgrind.*.out; do
        callgrind_annotate --inclusive=no --auto=no --threshold=100 "$profile"
    done | awk '
        match($0, /^ *[0-9,]+ \([ 0-9.]+%\)  /) {
            n = substr($0, 1, index($0, "(") - 1); gsub(/[ ,]/, "", n)
            f = substr($0, RLENGTH + 1)
            if (f ~ /PROGRAM TOTALS/) next
            sub(/ \[[^]]*\]$/, "", f); sub(/^[^:]*:/, "", f)
            own[f] += n
        }
        END { for (f in own) printf "%d\t%s\n", own[f], f }
    ' >"$out/$name/functions"
}

count before "$before"
count after "$after"
# Per call (or item): the totals, then the functions that moved by one instruction or more, the
# largest moves first.
awk -F'\t' -v before_calls="$(cat "$out/before/count")" -v after_calls="$(cat "$out/after/count")" '
    FNR == 1 { file++ }
    file == 1 { was[$2] = $1 / before_calls; total_was += was[$2]; seen[$2] = 1 }
    file == 2 { now[$2] = $1 / after_calls; total_now += now[$2]; seen[$2] = 1 }
    END {
        printf "%.1f before, %.1f after (%+.1f) instructions per call or item\n", total_was, total_now, total_now - total_was > "/dev/stderr"
        for (f in seen) {
            moved = now[f] - was[f]
            size = moved < 0 ? -moved : moved
            if (size >= 1) printf "%.1f\t%+.1f\t%.1f\t%.1f\t%s\n", size, moved, was[f], now[f], f
        }
    }
' "$out/before/functions" "$out/after/functions" 2>&1 >"$out/moved"
printf 'moved\tbefore\tafter\tfunction\n'
sort -t$'\t' -k1,1gr "$out/moved" | cut -f2- | head -25
