#!/usr/bin/env bash
# Where a sequential call's time goes across two processes: each end's turnaround (user space,
# from the system call that read a frame to the one that sends the next) and the transit each
# way between them (the kernel's: from one end's send to the other's read that returns it, polls
# included, so that a request's transit is longer for a server whose looks come further apart,
# and an answer's for such a client). A call's round trip is the client's turnaround, the two
# transits and the server's turnaround, so this says which end a gap in `rpc-bench`'s p50 is in,
# and whether it is user code at all, which neither the p50 nor an instruction count can. It also
# times whole calls, from one answer the client reads to the next, with the share of them over
# 50 µs: calls whose reader slept and was woken rather than polled (a wakeup takes tens of
# microseconds on a VM), what moves the p99; and of those, how many had each of the four parts
# longest, which says where the p99 is lost.
#
#     scripts/turnaround.sh [SYSTEM] [PROFILE]
#     scripts/turnaround.sh                       # rpc-core
#     scripts/turnaround.sh raw                   # the floor, for comparison
#     scripts/turnaround.sh rpc-core latency-main # the same calls made from `main`
#
# SYSTEM is one of `rpc-bench --profile`'s: rpc-core (the default), tarpc, tonic, raw, or
# rpc-core-raw-client (rpc-core's server under a client written as the floor's, which splits a
# gap between rpc-core's two ends);
# PROFILE is latency (the default: calls made from a task) or latency-main (the same calls made
# on the thread that runs the runtime's `block_on`, as a `#[tokio::main]` function makes them,
# which takes no hand-over from the connection's reader task to the caller's). With
# BENCH set to a saved `rpc-bench` binary, runs that one instead of building one: to compare two
# builds, save each (`cp target/release/rpc-bench /tmp/before-bench`) and run them in turn. Runs
# `rpc-bench --profile PROFILE SYSTEM` (server and client in two processes on default
# runtimes) under `perf record`, with the system calls' tracepoints: needs perf and the right to
# trace them (root, or kernel.perf_event_paranoid at -1 with tracefs readable). The tracepoints
# add some of their own time to every figure alike, so compare figures of one machine.
#
#     scripts/turnaround.sh --pinned [SYSTEM] [PROFILE]
#
# With `--pinned`, the server runs alone on CPU 1 (`rpc-bench --serve-all`) and the client alone
# on CPU 0 (`rpc-bench --remote`), each process a runtime of one worker: not how users run them,
# and no figure for BENCHMARKS.md, but the instrument for a change to either end's own work. On
# the two-core VM of the runs, unpinned calls fall from run to run into one mode or another some
# 4 µs slower, and it takes ten interleaved pairs of runs to tell a change of 0.1 µs; pinned, five
# interleaved pairs kept each system's p50 within 0.2 µs and each end's turnaround within 0.05 µs
# (the machine still moves both systems into its slower mode for minutes at a time: compare runs
# made together, interleaved). Needs two cores and `taskset`; the servers listen on loopback ports
# from PORT (7411 unless set) to PORT+3. With TOKIO_WORKER_THREADS=2 in the environment (tokio
# reads it), each process has the two workers the default runtime has on two cores, and takes
# their paths: a client's reader that answered its only call waits for the next call to be sent
# rather than poll, which with one worker it does not.
set -euo pipefail
pinned=false
if [[ ${1:-} == --pinned ]]; then
    pinned=true
    shift
fi
# A saved build named from where the script was started.
saved=${BENCH:+$(realpath -m -- "$BENCH")}
cd "$(dirname "$0")/.."

system=${1:-rpc-core}
profile=${2:-latency}
case $profile in
latency | latency-main) ;;
*)
    echo "turnaround.sh: PROFILE is latency or latency-main, not $profile" >&2
    exit 2
    ;;
esac
command -v perf >/dev/null || {
    echo "turnaround.sh: needs perf (apt install linux-perf, or linux-tools)" >&2
    exit 2
}
bench=${saved:-target/release/rpc-bench}
if [[ -z $saved ]]; then
    cargo build --release -p rpc-bench --quiet
fi
[[ -x $bench ]] || {
    echo "turnaround.sh: no rpc-bench to run at $bench" >&2
    exit 2
}
# A call slower than this many microseconds is one whose reader slept (see above).
slow_us=50
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
events=(
    -e sched:sched_process_exec
    # Reads that returned nothing (a poll that found no bytes) are left out as they happen.
    -e syscalls:sys_exit_recvfrom --filter 'ret > 0'
    -e syscalls:sys_enter_sendto -e syscalls:sys_enter_writev -e syscalls:sys_enter_sendmsg
)
server=""
if $pinned; then
    port=${PORT:-7411}
    taskset -c 1 "$bench" --serve-all "127.0.0.1:$port" >"$out/serve" 2>&1 &
    server=$!
    trap 'kill "$server" 2>/dev/null; rm -rf "$out"' EXIT
    for _ in $(seq 100); do
        grep -q "rpc-bench --remote" "$out/serve" && break
        kill -0 "$server" 2>/dev/null || break
        sleep 0.1
    done
    grep -q "rpc-bench --remote" "$out/serve" || {
        echo "turnaround.sh: the pinned servers did not start:" >&2
        cat "$out/serve" >&2
        exit 1
    }
    # The whole system's events, the server's among them: the client is the process that
    # execs (`taskset`, then the benchmark in its place).
    run=(perf record --quiet -a -o "$out/perf.data" "${events[@]}"
        -- taskset -c 0 "$bench" --remote "127.0.0.1:$port" --profile "$profile" "$system")
    setup="pinned to a core each"
else
    # The benchmark's process execs first and is the client; the server's, its child, second.
    run=(perf record --quiet -o "$out/perf.data" "${events[@]}"
        -- "$bench" --profile "$profile" "$system" --setup cross-process)
    setup="across two processes"
fi
if ! "${run[@]}" >"$out/report" 2>"$out/perf"; then
    echo "turnaround.sh: perf record failed:" >&2
    cat "$out/perf" >&2
    exit 1
fi
perf script --ns -i "$out/perf.data" -F pid,time,event 2>/dev/null |
    awk -v out="$out" -v slow_us="$slow_us" -v server="$server" '
    BEGIN {
        if (server != "") role[server] = "server"
    }
    {
        split($1, ids, "/"); pid = ids[1]; time = $2 + 0
    }
    /sched_process_exec/ {
        if (server == "") role[pid] = (++execs == 1) ? "client" : "server"
        else if (++execs == 1) role[pid] = "client"
        next
    }
    # Another process of the system, when the whole system is traced.
    !(pid in role) { next }
    /sys_exit_recvfrom/ {
        # A request ends its transit in a read of the server, an answer in one of the client.
        if (sender != "" && sender != pid) print (time - sent) * 1e9 > (out "/" role[pid] "-transit")
        if (role[pid] == "client") {
            if (answered != "") print (time - answered) * 1e9 > (out "/calls")
            # A slow call: which of its four parts took longest.
            if (answered != "" && (time - answered) * 1e6 > slow_us && s_sent != "") {
                longest = "the client turnaround"; most = c_sent - answered
                if (s_read - c_sent > most) {
                    longest = "the request transit"; most = s_read - c_sent
                }
                if (s_sent - s_read > most) {
                    longest = "the server turnaround"; most = s_sent - s_read
                }
                if (time - s_sent > most) longest = "the answer transit"
                print longest > (out "/slow")
            }
            answered = time; c_sent = ""; s_read = ""; s_sent = ""
        } else if (c_sent != "" && s_read == "") {
            s_read = time
        }
        received[pid] = time
        next
    }
    /sys_enter_(sendto|writev|sendmsg)/ {
        if (pid in received && pid in role) {
            print (time - received[pid]) * 1e9 > (out "/" role[pid])
            delete received[pid]
        }
        if (role[pid] == "client" && c_sent == "") c_sent = time
        if (role[pid] == "server" && s_read != "" && s_sent == "") s_sent = time
        sender = pid; sent = time
    }
'
quartiles() {
    sort -n "$1" | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "no samples"; exit }
        printf "p50 %.2f µs (p25 %.2f, p75 %.2f; %d samples)\n",
            v[int(NR / 2) + 1] / 1000, v[int(NR / 4) + 1] / 1000, v[int(3 * NR / 4) + 1] / 1000, NR
    }'
}
# The tail of `$1`'s samples, and the share of them slow.
tail_of() {
    sort -n "$1" | awk -v slow_us="$slow_us" '{ v[NR] = $1; if ($1 > slow_us * 1000) slow++ } END {
        printf "p50 %.2f µs, p90 %.2f, p99 %.2f; %.2f%% over %d µs (%d samples)\n",
            v[int(NR / 2) + 1] / 1000, v[int(9 * NR / 10) + 1] / 1000,
            v[int(99 * NR / 100) + 1] / 1000, 100 * slow / NR, slow_us, NR
    }'
}
# The share of slow calls in which each part took longest, the largest first.
longest_parts() {
    if [[ ! -s $1 ]]; then
        echo "none"
        return
    fi
    sort "$1" | uniq -c | sort -rn | awk '{
        count[NR] = $1; $1 = ""; part[NR] = substr($0, 2); total += count[NR]
    } END {
        for (i = 1; i <= NR; i++) {
            printf "%s%s %.0f%%", (i > 1 ? ", " : ""), part[i], 100 * count[i] / total
        }
        printf " (%d calls)\n", total
    }'
}
for part in client server server-transit client-transit calls; do
    if [[ ! -s $out/$part ]]; then
        echo "turnaround.sh: no $part samples; perf said: $(cat "$out/perf")" >&2
        exit 1
    fi
done
echo "$system, sequential calls ($profile) $setup: $(tail -n 1 "$out/report")"
echo "  client's turnaround (answer read to next request sent): $(quartiles "$out/client")"
echo "  server's turnaround (request read to answer sent):      $(quartiles "$out/server")"
echo "  request transit (client's send to the server's read):   $(quartiles "$out/server-transit")"
echo "  answer transit (server's send to the client's read):    $(quartiles "$out/client-transit")"
echo "  calls (one answer read to the next, at the client):     $(tail_of "$out/calls")"
echo "  calls over $slow_us µs, by their longest part: $(longest_parts "$out/slow")"
