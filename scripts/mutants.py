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
number, then `caught:BINARY` (the test binary that failed first), `MISSED`, `unviable` (does
not build) or `timeout:BINARY` (counted as caught: a test waited for its guard), then the
mutant. A mutant already in the log is skipped, so a long run can be stopped and started again.
The test binaries run side by side, each in its own process group: the first failure decides,
and the rest (or all, at the time limit) are killed whole, so that a mutant that makes a test
spin leaves nothing running. While a file named like the log with `.pause` after it exists
(`touch mutants.out/narrow.log.pause`), the run waits between two mutants.

Side by side, the binaries share the machine's cores: a test that holds only on an idle machine
would fail there and call every mutant caught. So before the first mutant the script runs the
unmutated tests side by side a few times, and refuses to start if any fails.
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

# How many times the unmutated tests run side by side before the first mutant.
PRECHECK_RUNS = 3


def test_binaries(builds, cwd, env):
    """Runs the cargo commands `builds`, one after another, with JSON messages: the test
    executables they build as (name, executable, package directory), or None if a build fails
    or outlives an hour (its process group is killed).
    """
    binaries = []
    for build in builds:
        process = subprocess.Popen(
            build + ["--quiet", "--message-format=json"],
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
        for line in output.splitlines():
            message = json.loads(line)
            if message.get("reason") == "compiler-artifact" and message["profile"]["test"]:
                package = os.path.dirname(message["manifest_path"])
                binaries.append((message["target"]["name"], message["executable"], package))
    return binaries


def run_all(binaries, timeout, env):
    """Runs the test binaries side by side: "caught:NAME" at the first that fails,
    "timeout:NAME" if one outlives the limit, else "MISSED", with what that binary printed
    (empty if none failed). Those still running when the verdict is known are killed.

    The socket tests mostly wait on timers and sockets, so running the binaries together takes
    about as long as the slowest one, not the sum.
    """
    outputs = {name: tempfile.TemporaryFile() for name, _, _ in binaries}
    running = [
        (
            name,
            subprocess.Popen(
                [binary, "--quiet"],
                cwd=package,
                env=dict(env, CARGO_MANIFEST_DIR=package),
                stdout=outputs[name],
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ),
        )
        for name, binary, package in binaries
    ]
    deadline = time.monotonic() + timeout
    verdict = "MISSED"
    while running and verdict == "MISSED":
        time.sleep(0.05)
        codes = [(name, process, process.poll()) for name, process in running]
        running = [(name, process) for name, process, code in codes if code is None]
        failed = [name for name, _, code in codes if code not in (None, 0)]
        if failed:
            verdict = f"caught:{failed[0]}"
        elif running and time.monotonic() > deadline:
            verdict = f"timeout:{running[0][0]}"
    for _, process in running:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    printed = ""
    if verdict != "MISSED":
        output = outputs[verdict.split(":", 1)[1]]
        output.seek(0)
        printed = output.read().decode(errors="replace")
    for output in outputs.values():
        output.close()
    return verdict, printed


def wait_while_paused(log):
    """Waits while a file named like the log with `.pause` after it exists: a long run can lend
    the machine to a benchmark, between two mutants, without being stopped."""
    pause = log + ".pause"
    if os.path.exists(pause):
        print(f"paused until {pause} is removed", file=sys.stderr)
        while os.path.exists(pause):
            time.sleep(1)


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
    # `--tests` builds every test target of the packages named, whatever `--test` says: the
    # socket tests chosen are built by a command of their own.
    if args.all_tests:
        builds = [["cargo", "build", "--tests", "-p", "rpc-core", "-p", "rpc-tests"]]
    else:
        chosen = [word for test in args.test for word in ("--test", test)]
        builds = [
            ["cargo", "build", "--tests", "-p", "rpc-core"],
            ["cargo", "build", "-p", "rpc-tests", *chosen],
        ]
    try:
        binaries = test_binaries(builds, scratch, env)
        if not binaries:
            sys.exit("the unmutated tree does not build")
        names = " ".join(sorted(name for name, _, _ in binaries))
        print(f"the tests of each mutant: {names}", file=sys.stderr)
        for _ in range(PRECHECK_RUNS):
            verdict, printed = run_all(binaries, args.timeout, env)
            if verdict != "MISSED":
                print(printed, file=sys.stderr)
                sys.exit(f"unmutated, side by side, the tests fail ({verdict}): fix that test first")
        os.makedirs(os.path.dirname(os.path.abspath(args.log)), exist_ok=True)
        with open(args.log, "a") as log:
            for number, mutant in enumerate(mutants):
                if mutant["name"] in done:
                    continue
                wait_while_paused(args.log)
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
                elif not (binaries := test_binaries(builds, scratch, env)):
                    verdict = "unviable"
                else:
                    verdict, _ = run_all(binaries, args.timeout, env)
                subprocess.check_call(["git", "checkout", "-q", "--", path], cwd=scratch)
                log.write(f"{number} {verdict} {mutant['name']}\n")
                log.flush()
                print(f"{number + 1}/{len(mutants)} {verdict} {mutant['name']}", file=sys.stderr)
    finally:
        subprocess.call(["git", "worktree", "remove", "--force", scratch], cwd=root)


if __name__ == "__main__":
    main()
