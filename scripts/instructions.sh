#!/usr/bin/env bash
# Instructions of user code per call (or per streamed item), counted by callgrind: the figure
# BENCHMARKS.md gives for each change to the call path, which time cannot show on a noisy
# machine (counts repeat within about 1% from run to run; rates there vary by a third).
#
#     scripts/instructions.sh [WORKLOAD] [SYSTEM] [SETUP]
#     scripts/instructions.sh latency          # rpc-core, one call at a time (the default)
#     scripts/instructions.sh 32 tarpc         # tarpc, 32 callers on one connection
#     scripts/instructions.sh stream           # per item of a stream of small numbers
#
# WORKLOAD is one of `rpc-bench --profile`'s that count calls or items: latency, 32, 256,
# 4x64, 100x32 or stream; SYSTEM is rpc-core (the default), tarpc, tonic or raw; SETUP is
# cross-process (the default: server and clients in two processes on default runtimes, as
# users run them, both counted), shared or isolated. The count includes the benchmark's own
# loop around each call, and the warm-up calls of `latency`. Needs valgrind
# (`apt install valgrind`).
set -euo pipefail
cd "$(dirname "$0")/.."

workload=${1:-latency}
system=${2:-rpc-core}
setup=${3:-cross-process}
command -v valgrind >/dev/null || {
    echo "instructions.sh: needs valgrind (apt install valgrind)" >&2
    exit 2
}
cargo build --release -p rpc-bench --quiet
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The server's process, a child of the benchmark's, is counted too.
valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$out/callgrind.%p.out" \
    target/release/rpc-bench --profile "$workload" "$system" --setup "$setup" \
    >"$out/report" 2>"$out/valgrind"
# One total per process; their sum.
total=$(sed -n 's/.*I *refs: *//p' "$out/valgrind" | tr -d , | awk '{ sum += $1 } END { printf "%.0f\n", sum }')
processes=$(grep -c 'I *refs' "$out/valgrind" || true)
report=$(cat "$out/report")
# The profile ends its report with the count: "(220000 calls)" or "(10000000 items)".
count=$(sed -n 's/.*(\([0-9]*\) \(calls\|items\))$/\1/p' <<<"$report")
unit=$(sed -n 's/.*([0-9]* \(calls\|items\))$/\1/p' <<<"$report")
if [[ -z $total || -z $count || $count -eq 0 ]]; then
    echo "instructions.sh: no count in the profile's report: $report" >&2
    exit 1
fi
echo "$system, $workload, $setup: $(((total + count / 2) / count)) instructions per ${unit%s} ($total over $count $unit, $processes processes; $report)"
