#!/usr/bin/env python3
"""Runs cargo-mutants' mutants against chosen socket tests only.

cargo-mutants runs the tests of every package it is told to, and passes the same arguments to
each, so a run cannot be narrowed to some of `rpc-tests`' test binaries: `-- --test reverse`
fails in rpc-core, which has no such binary. This script asks cargo-mutants for the mutants
(and their diffs), then for each one applies its diff in a scratch worktree, builds, runs
rpc-core's unit tests and the named test binaries of `rpc-tests`, and restores the file.

    scripts/mutants.py --in-diff /tmp/change.diff --test reverse --test memory
    scripts/mutants.py -f rpc-core/src/reverse.rs --test reverse

Each line of the log (default `mutants.out/narrow.log`, which git ignores) is the mutant's
number, then `caught`, `MISSED`, `unviable` (does not build) or `timeout` (counted as caught: a
test waited for its guard), then the mutant. A mutant already in the log is skipped, so a long
run can be stopped and started again. Every
command runs in its own process group, killed whole at its time limit, so that a mutant that
makes a test spin leaves nothing running.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile


def run(command, cwd, timeout, env=None):
    """Runs `command` in a shell of its own process group: its exit code, or "timeout"."""
    process = subprocess.Popen(
        command,
        shell=True,
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return "timeout"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--in-diff", help="the mutants of the lines this diff changes")
    chosen.add_argument("-f", "--file", action="append", help="the mutants of these files")
    parser.add_argument("--test", action="append", required=True, help="an rpc-tests binary")
    parser.add_argument("--match", help="only the mutants whose name this regular expression finds")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per test command")
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
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(scratch, "target"))
    tests = "-p rpc-tests " + " ".join(f"--test {test}" for test in args.test)
    build = f"cargo build --tests -p rpc-core {tests} --quiet"
    try:
        if run(build, scratch, 3600, env) != 0:
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
                elif run(build, scratch, 3600, env) != 0:
                    verdict = "unviable"
                else:
                    verdict = "MISSED"
                    for command in ("cargo test -p rpc-core --lib --quiet", f"cargo test {tests} --quiet"):
                        code = run(command, scratch, args.timeout, env)
                        if code != 0:
                            verdict = "timeout" if code == "timeout" else "caught"
                            break
                subprocess.check_call(["git", "checkout", "-q", "--", path], cwd=scratch)
                log.write(f"{number} {verdict} {mutant['name']}\n")
                log.flush()
                print(f"{number + 1}/{len(mutants)} {verdict} {mutant['name']}", file=sys.stderr)
    finally:
        subprocess.call(["git", "worktree", "remove", "--force", scratch], cwd=root)


if __name__ == "__main__":
    main()
