#!/usr/bin/python3
"""tests/bench/profile.py - where does the router's CPU go under pgbench?

Starts the same two clusters, PgBouncer and router as bench.py (no COPY table), runs pgbench -S
against the router (or PgBouncer) and, at the same time, one of:
  perf    perf record -g (cpu-clock, frame pointers and DWARF-less call graphs) of the proxy
  strace  strace -c -f of the proxy: syscall counts and time per transaction
  stat    only the proxy's CPU per transaction (utime/stime split)
  insn    user-space instructions per transaction (valgrind --tool=callgrind): a fresh copy of
          the proxy under callgrind on a port of its own, once for a short pgbench -t run and
          once for a longer one; the difference over the extra transactions (login, start-up
          and shutdown cancel out). Counts do not depend on the machine's load, unlike CPU time.
then prints the top of the report to stdout and leaves the full report in the results dir.

    /usr/bin/python3 tests/bench/profile.py [perf|strace|stat|insn] ...
Environment: PROFILE_TARGET (router | pgbouncer), PROFILE_CLIENTS (16), PROFILE_MODE (simple),
PROFILE_CHURN (0; 1 adds -C), PROFILE_SECONDS (8), PROFILE_INSN_TXNS (2000: the extra
transactions of insn's longer run, over all clients), BENCH_RESULTS_DIR (build/bench), TR_BIN.
Needs linux-perf for perf (apt-get install linux-perf), strace for strace, valgrind for insn.
"""

import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

# What a proxy reads and writes its sockets with: the router (libuv) read/write,
# PgBouncer recv/send (recvfrom/sendto).
IO_CALLS = ("read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
            "epoll_wait", "epoll_ctl", "total")


def callgrind_total(path):
    """The Ir total of a callgrind output file."""
    with open(path) as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def insn_run(env, target, mode, clients, per_client, outdir):
    """Ir of a fresh proxy under callgrind that served pgbench -t per_client, then stopped."""
    port = bench.free_port()
    out = os.path.join(outdir, f"callgrind-{target}-{per_client}.out")
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    if target == "pgbouncer":
        cfg = os.path.join(outdir, "pgbouncer.ini")
        with open(env.pgb.ini) as f:
            txt = re.sub(r"(?m)^listen_port = \d+", f"listen_port = {port}", f.read())
        cmd = vg + ["pgbouncer", cfg]
        if os.geteuid() == 0:
            cmd = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] + cmd
    else:
        cfg = os.path.join(outdir, "router.ini")
        with open(env.router.cfg) as f:
            txt = re.sub(r"(?m)^listen = \S+", f"listen = 127.0.0.1:{port}", f.read())
        cmd = vg + [bench.S.tr_bin, "-c", cfg]
    with open(cfg, "w") as f:
        f.write(txt)
    os.chmod(cfg, 0o644)
    if os.path.exists(out):
        os.unlink(out)
    log = open(os.path.join(outdir, f"{target}.log"), "ab")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=outdir)
    try:
        def up():
            if proc.poll() is not None:
                raise RuntimeError(f"{target} under valgrind exited {proc.returncode}")
            try:
                bench.socket.create_connection(("127.0.0.1", port), 0.5).close()
                return True
            except OSError:
                return False
        bench.wait_until(up, 120, f"{target} under valgrind to listen")
        e = env.client_env(target)
        e["PGPORT"] = str(port)
        r = subprocess.run(["pgbench", "-n", "-S", "-M", mode, "-c", str(clients), "-j",
                            str(min(2, clients)), "-t", str(per_client)], env=e,
                           capture_output=True, text=True, timeout=1800)
        if r.returncode != 0 or "actually processed" not in r.stdout:
            raise RuntimeError(f"pgbench through {target} under valgrind failed:\n{r.stderr}")
    finally:
        proc.send_signal(2)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
    return callgrind_total(out)


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
            if tool == "insn":
                outdir = os.path.join(env.tmp, f"insn-{tag}")
                os.makedirs(outdir, exist_ok=True)
                os.chmod(outdir, 0o777)  # PgBouncer under valgrind runs as postgres
                extra = int(os.environ.get("PROFILE_INSN_TXNS", "2000"))
                short, more = 50, max(1, extra // clients)
                ir0 = insn_run(env, target, mode, clients, short, outdir)
                ir1 = insn_run(env, target, mode, clients, short + more, outdir)
                print(f"== insn: {target} pgbench -S -M {mode} -c {clients}: "
                      f"{(ir1 - ir0) / (more * clients):.0f} instructions per txn in user space "
                      f"({ir0} Ir for {short * clients} txns, {ir1} Ir for "
                      f"{(short + more) * clients})", flush=True)
                continue
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
                    if len(p) >= 5 and p[-1] in IO_CALLS:
                        calls = int(p[3])
                        print(f"   {p[-1]}: {calls / n:.2f} calls per txn")
    finally:
        bench.teardown(env)


if __name__ == "__main__":
    main()
