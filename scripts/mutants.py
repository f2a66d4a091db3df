#!/usr/bin/env python3
"""Runs cargo-mutants' mutants against rpc-core's unit tests and chosen socket tests, fast.

cargo-mutants runs the tests of every package it is told to, and passes the same arguments to
each, so a run cannot be narrowed to some of `rpc-tests`' test binaries: `-- --test reverse`
fails in rpc-core, which has no such binary. This script asks cargo-mutants for the mutants
(and their diffs), then for each one applies its diff in a scratch worktree, builds, runs
rpc-core's unit tests and the named test binaries of `rpc-tests`, and restores the file.

    scripts/mutants.py --in-diff /tmp/change.diff --test reverse --test memory
    scripts/mutants.py -f rpc-core/src/reverse.rs --test reverse
    scripts/mutants.py -f 'rpc-core/src/server/*.rs' --all-tests

Each line of the log (default `mutants.out/narrow.log`, which git ignores) is the mutant's
number, then `caught`, `MISSED`, `unviable` (does not build) or `timeout` (counted as caught: a
test waited for its guard), then the mutant. A mutant already in the log is skipped, so a long
run can be stopped and started again. The test binaries run side by side, each in its own
process group: the first failure decides, and the rest (or all, at the time limit) are killed
whole, so that a mutant that makes a test spin leaves nothing running.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time


def test_binaries(build, cwd, env):
    """Builds the tests, `build` with JSON messages: the test executables with their packages'
    directories, or None if the build fails or outlives an hour (its process group is killed).
    """
    process = subprocess.Popen(
        build + " --message-format=json",
        shell=True,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=3600)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return None
    if process.returncode != 0:
        return None
    binaries = []
    for line in output.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message["profile"]["test"]:
            package = os.path.dirname(message["manifest_path"])
            binaries.append((message["executable"], package))
    return binaries


def run_all(binaries, timeout, env):
    """Runs the test binaries side by side: "caught" at the first that fails, "timeout" if one
    outlives the limit, else "MISSED". Those still running when the verdict is known are killed.

    The socket tests mostly wait on timers and sockets, so running the binaries together takes
    about as long as the slowest one, not the sum.
    """
    running = [
        subprocess.Popen(
            [binary, "--quiet"],
            cwd=package,
            env=dict(env, CARGO_MANIFEST_DIR=package),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for binary, package in binaries
    ]
    deadline = time.monotonic() + timeout
    verdict = "MISSED"
    while running and verdict == "MISSED":
        time.sleep(0.05)
        codes = [(process, process.poll()) for process in running]
        running = [process for process, code in codes if code is None]
        if any(code not in (None, 0) for _, code in codes):
            verdict = "caught"
        elif running and time.monotonic() > deadline:
            verdict = "timeout"
    for process in running:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return verdict


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--in-diff", help="the mutants of the lines this diff changes")
    chosen.add_argument("-f", "--file", action="append", help="the mutants of these files")
    tests = parser.add_mutually_exclusive_group(required=True)
    tests.add_argument("--test", action="append", help="an rpc-tests binary")
    tests.add_argument("--all-tests", action="store_true", help="every rpc-tests binary")
    parser.add_argument("--match", help="only the mutants whose name this regular expression finds")
    parser.add_argument("--timeout", type=int, default=300, help="seconds the tests of one mutant may take")
    parser.add_argument("--log", default="mutants.out/narrow.log")
    args = parser.parse_args()

    root = subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip()
    listing = ["cargo", "mutants", "--list", "--json", "--diff"]
    if args.in_diff:
        listing += ["--in-diff", os.path.abspath(args.in_diff)]
    for file in args.file or []:
        listing += ["-f", file]
    mutants = json.loads(subprocess.check_output(listing, cwd=root, text=True))
    if args.match:
        mutants = [mutant for mutant in mutants if re.search(args.match, mutant["name"])]
    done = set()
    if os.path.exists(args.log):
        with open(args.log) as log:
            done = {line.split(" ", 2)[2].rstrip("\n") for line in log if line.count(" ") >= 2}
    print(f"{len(mutants)} mutants, {len(done & {m['name'] for m in mutants})} already in the log", file=sys.stderr)

    scratch = tempfile.mkdtemp(prefix="rpc-mutants-")
    subprocess.check_call(["git", "worktree", "add", "--detach", "-q", scratch], cwd=root)
    # No debug information: a mutant's rebuild links a dozen test binaries, and it halves that.
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(scratch, "target"), CARGO_PROFILE_DEV_DEBUG="0")
    if args.all_tests:
        tests = "-p rpc-tests"
    else:
        tests = "-p rpc-tests " + " ".join(f"--test {test}" for test in args.test)
    build = f"cargo build --tests -p rpc-core {tests} --quiet"
    try:
        if not test_binaries(build, scratch, env):
            sys.exit("the unmutated tree does not build")
        os.makedirs(os.path.dirname(os.path.abspath(args.log)), exist_ok=True)
        with open(args.log, "a") as log:
            for number, mutant in enumerate(mutants):
                if mutant["name"] in done:
                    continue
                path = mutant["file"]
                patch = subprocess.run(
                    ["patch", "-p0", "--quiet", path],
                    cwd=scratch,
                    input=mutant["diff"],
                    text=True,
                    capture_output=True,
                )
                if patch.returncode != 0:
                    verdict = "unapplied"
                elif not (binaries := test_binaries(build, scratch, env)):
                    verdict = "unviable"
                else:
                    verdict = run_all(binaries, args.timeout, env)
                subprocess.check_call(["git", "checkout", "-q", "--", path], cwd=scratch)
                log.write(f"{number} {verdict} {mutant['name']}\n")
                log.flush()
                print(f"{number + 1}/{len(mutants)} {verdict} {mutant['name']}", file=sys.stderr)
    finally:
        subprocess.call(["git", "worktree", "remove", "--force", scratch], cwd=root)


if __name__ == "__main__":
    main()
