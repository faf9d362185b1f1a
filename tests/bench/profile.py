#!/usr/bin/python3
"""tests/bench/profile.py - where does the router's CPU go under pgbench?

Starts the same two clusters, PgBouncer and router as bench.py (no COPY table), runs pgbench -S
against the router (or PgBouncer) and, at the same time, one of:
  perf    perf record -g (cpu-clock, frame pointers and DWARF-less call graphs) of the proxy
  strace  strace -c -f of the proxy: syscall counts and time per transaction
  stat    only the proxy's CPU per transaction (utime/stime split)
then prints the top of the report to stdout and leaves the full report in the results dir.

    /usr/bin/python3 tests/bench/profile.py [perf|strace|stat] ...
Environment: PROFILE_TARGET (router | pgbouncer), PROFILE_CLIENTS (16), PROFILE_MODE (simple),
PROFILE_CHURN (0; 1 adds -C), PROFILE_SECONDS (8), BENCH_RESULTS_DIR (build/bench), TR_BIN.
Needs linux-perf for perf (apt-get install linux-perf) and strace for strace.
"""

import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def main():
    tools = sys.argv[1:] or ["perf"]
    bench.S = bench.Settings()
    bench.S.only = {"select"}  # no COPY table in setup
    bench.OUR_ROOTS.add(os.getpid())
    S = bench.S
    target = os.environ.get("PROFILE_TARGET", "router")
    clients = int(os.environ.get("PROFILE_CLIENTS", "16"))
    mode = os.environ.get("PROFILE_MODE", "simple")
    churn = os.environ.get("PROFILE_CHURN", "0") == "1"
    secs = int(os.environ.get("PROFILE_SECONDS", "8"))
    os.makedirs(S.results, exist_ok=True)
    env = bench.Env()
    tag = f"{target}-{'C' if churn else mode}-c{clients}"
    try:
        bench.setup(env)
        pid = env.proxy_pid(target)
        subprocess.run(["pgbench", "-n", "-S", "-c", "64", "-j", "2", "-T", "2"],
                       env=env.client_env(target), capture_output=True, timeout=60)
        for tool in tools:
            args = ["pgbench", "-n", "-S", "-M", mode, "-c", str(clients), "-j",
                    str(min(2, clients)), "-T", str(secs)] + (["-C"] if churn else [])
            out = os.path.join(S.results, f"profile-{tool}-{tag}")
            bench.wait_quiet()
            with open(f"/proc/{pid}/stat") as f:
                st0 = f.read().rsplit(")", 1)[1].split()
            if tool == "perf":
                prof = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "4999",
                                         "-g", "-p", str(pid), "-o", out + ".data", "--",
                                         "sleep", str(secs)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
            elif tool == "strace":
                prof = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o",
                                         out + ".txt"], stderr=subprocess.DEVNULL)
            else:
                prof = None
            time.sleep(0.3)
            r = subprocess.run(args, env=env.client_env(target), capture_output=True, text=True,
                               timeout=secs + 60)
            with open(f"/proc/{pid}/stat") as f:
                st1 = f.read().rsplit(")", 1)[1].split()
            if prof:
                if tool == "strace":
                    prof.send_signal(2)
                prof.wait(60)
            n = int(re.search(r"actually processed: (\d+)", r.stdout).group(1))
            tps = re.search(r"^tps = ([0-9.]+)", r.stdout, re.M).group(1)
            ut = (int(st1[11]) - int(st0[11])) / bench.HZ
            stt = (int(st1[12]) - int(st0[12])) / bench.HZ
            print(f"== {tool}: {target} pgbench -S -M {mode} -c {clients}{' -C' if churn else ''}"
                  f": {n} txns, {tps} tps; proxy CPU {(ut + stt) * 1e6 / n:.1f} µs/txn "
                  f"(user {ut * 1e6 / n:.1f}, system {stt * 1e6 / n:.1f})", flush=True)
            if tool == "perf":
                rep = subprocess.run(["perf", "report", "-i", out + ".data", "--stdio",
                                      "--no-children", "--sort", "dso,symbol",
                                      "--percent-limit", "0.7", "-g", "none"],
                                     capture_output=True, text=True, timeout=300)
                with open(out + ".txt", "w") as f:
                    f.write(rep.stdout)
                print("\n".join(ln for ln in rep.stdout.splitlines()
                                if ln.strip() and not ln.startswith("#"))[:6000])
                rep = subprocess.run(["perf", "report", "-i", out + ".data", "--stdio",
                                      "--children", "--sort", "symbol", "--percent-limit", "3",
                                      "-g", "none"], capture_output=True, text=True, timeout=300)
                with open(out + "-children.txt", "w") as f:
                    f.write(rep.stdout)
                print("-- inclusive (children) --")
                print("\n".join(ln for ln in rep.stdout.splitlines()
                                if ln.strip() and not ln.startswith("#"))[:4000])
            elif tool == "strace":
                with open(out + ".txt") as f:
                    txt = f.read()
                print(txt[:4000])
                for line in txt.splitlines():
                    p = line.split()
                    if len(p) >= 5 and p[-1] in ("read", "write", "writev", "readv",
                                                 "epoll_wait", "epoll_ctl", "total"):
                        calls = int(p[3])
                        print(f"   {p[-1]}: {calls / n:.2f} calls per txn")
    finally:
        bench.teardown(env)


if __name__ == "__main__":
    main()
