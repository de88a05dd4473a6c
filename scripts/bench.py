#!/usr/bin/env python3
"""Benchmark of the module inside nginx (not part of the test suite): what a sticky request
costs compared with nginx's plain round robin, at 2, 64 and 1024 servers.

Run it through scripts/bench, which first installs what it needs (the build dependencies,
wrk, valgrind). It builds the module (cargo build --release) and works in target/bench, where
the raw data stays afterwards.

Everything runs on 127.0.0.1: one nginx (the bundled binary, no module) answering
`return 200 "ok"` on 1024 ports stands for the backends; a proxy nginx with ONE worker and
the module has, for N in 2, 64, 1024, an upstream rr_N (round robin) and jr_N (the same
servers with srun_id=sNNNN and `jvm_route $cookie_JSESSIONID reverse`), both with keepalive.
and jc_N (jr_N's servers with active health checks: `check type=tcp interval=60000`, long
enough that no check runs while requests are measured). Cases per N:
  rr       round robin, no cookie (rr_N)                        - the baseline
  hit      jvm_route, cookie naming the middle server (jr_N)    - a sticky hit
  hit_checked  the same on jc_N                                 - a sticky hit with checks
  none     jvm_route, no session (jr_N)                         - falls back to round robin
  unknown  jvm_route, cookie JSESSIONID=X.nosuch (jr_N)         - falls back to round robin
and, for instructions only, the same requests on round robin: rr_cookie (rr_N with the sticky
hit's Cookie header) and rr_unknown (rr_N with the unknown route's), which tell nginx's own
cost of receiving that header apart from the module's.

1. Throughput: wrk -t1 -c16 -dS per case, R rounds; within a round the cases of one N run
   back to back (in an order that rotates by round), so that machine noise hits them alike.
   Printed as the ratio to round robin of the same N in the same round (min/median/max).
2. Instructions per request: the proxy under valgrind --tool=callgrind (master_process off),
   K requests on one keepalive connection, then a second run with K+D; the difference / D
   is the cost of one request without start-up and warm-up. The module's share is read
   from the same profiles.

3. What the checks themselves cost: a separate nginx (one worker, no traffic) checking 1,000
   servers every second (type=http, against the backends), its worker's CPU time over 20 s;
   once with a new connection for each check (HTTP/1.0, the check module's default), once
   with connections that carry 100 checks each (HTTP/1.1, check_keepalive_requests 100).

Other processes on the machine disturb the throughput figures (the ratios less so); the
instruction counts are not disturbed by them.
"""

import argparse
import http.client
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "target" / "bench"
MODULE_MARKER = "libngx_http_upstream_jvm_route_module"
MODULE = ROOT / "target" / "release" / f"{MODULE_MARKER}.so"

SERVERS = (2, 64, 1024)
# The proxy's upstreams: round robin, jvm_route, jvm_route with checks; each has its own server.
UPSTREAMS = tuple(f"{kind}_{n}" for n in SERVERS for kind in ("rr", "jr", "jc"))
CASES = ("rr", "hit", "hit_checked", "none", "unknown")
CG_CASES = ("rr", "rr_cookie", "hit", "hit_checked", "none", "rr_unknown", "unknown")
# The checks of jc_N: long enough that none runs while requests are measured.
JC_CHECK = "check interval=60000 rise=1 fall=1 timeout=1000 type=tcp default_down=false;"
# The checker-cost step: servers, interval (ms), seconds measured.
CHECKER_SERVERS, CHECKER_INTERVAL, CHECKER_SECONDS = 1000, 1000, 20
MAX_SERVERS = 1024
CONNECTIONS = 16
SESSION_HEX = "5C3A9F0B7D21E4C68A0F3B5D7E9C1A2F"

# Callgrind: warm-up requests K (>= 1024 so that round robin over 1024 servers has opened its
# keepalive connection to every backend before the measured window) and the measured D.
CG_WARM, CG_MEASURED = 2000, 2000
QUICK_CG_WARM, QUICK_CG_MEASURED = 1200, 500
ROUNDS, DURATION = 5, 3
QUICK_ROUNDS, QUICK_DURATION = 2, 1

# The module's balancer callbacks (their inclusive cost is the "module callbacks" column).
ENTRY = re.compile(r"ngx_http_upstream_jvm_route_module::balancer::"
                   r"(init_peer|get_peer|free_peer|notify_peer|set_peer_session|save_peer_session)$")
# What the module's callbacks hand on to: the wrapped balancing method (round robin here) and
# the next output filters. Not the module's own cost.
WRAPPED = re.compile(r"^ngx_http_upstream_(init|get|free|notify)_round_robin_peer$|"
                     r"^ngx_http_upstream_(set|save)_round_robin_peer_session$")


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived."""


@dataclass(frozen=True)
class Settings:
    """What the command line asked for."""
    rounds: int
    duration: int
    cg_warm: int
    cg_measured: int
    command: str


@dataclass(frozen=True)
class Setup:
    """What the run found and chose: binaries, ports, limits."""
    nginx: Path
    base: int
    nofile: int
    user_line: str

    @property
    def proxy_port(self):
        return self.base + MAX_SERVERS

    @property
    def cg_port(self):
        return self.base + MAX_SERVERS + 1 + len(UPSTREAMS)

    @property
    def worker_connections(self):
        return min(self.nofile, 16384)


# --- command line ------------------------------------------------------------------------------

def positive_int(message):
    """An argparse type: a whole number >= 1 written without sign or leading zero."""
    def parse(text):
        if not re.fullmatch(r"[1-9][0-9]*", text):
            raise argparse.ArgumentTypeError(message)
        return int(text)
    return parse


def parse_args(argv):
    """Settings from the command line, with --quick's shorter defaults."""
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", metavar="R", type=positive_int("must be a positive integer"),
                        help=f"throughput rounds (default {ROUNDS}, {QUICK_ROUNDS} with --quick)")
    parser.add_argument("--duration", metavar="S",
                        type=positive_int("must be whole seconds >= 1"),
                        help=f"seconds of wrk per case and round (default {DURATION}, "
                             f"{QUICK_DURATION} with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a short smoke run: fewer and shorter rounds, callgrind with "
                             f"{QUICK_CG_WARM} + {QUICK_CG_MEASURED} requests instead of "
                             f"{CG_WARM} + {CG_MEASURED}")
    args = parser.parse_args(argv[1:])
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    duration = args.duration or (QUICK_DURATION if args.quick else DURATION)
    warm, measured = (QUICK_CG_WARM, QUICK_CG_MEASURED) if args.quick else (CG_WARM, CG_MEASURED)
    return Settings(rounds, duration, warm, measured, shlex.join(argv))


def say(text):
    """A section heading, in bold."""
    print(f"\033[1m==> {text}\033[0m")


# --- processes ---------------------------------------------------------------------------------

def proc_stat(pid):
    """The fields of /proc/PID/stat after the command name (state, ppid, ...), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def alive(pid):
    """The process runs (a zombie does not)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def all_pids():
    """Every process id in /proc."""
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def child_pids(pid):
    """The direct children of a process (an nginx master's workers)."""
    children = []
    for other in all_pids():
        stat = proc_stat(other)
        if stat is not None and int(stat[1]) == pid:
            children.append(other)
    return children


def cmdline(pid):
    """A process's command line, arguments separated by spaces ('' if gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def stop_pid(pid, popen=None):
    """TERM, then KILL (it and its children: nginx workers) after 10 s. `popen` is given for a
    child of this program, which is then reaped."""
    children = child_pids(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        if popen is not None:
            popen.wait()
        return
    for _ in range(100):
        if (popen.poll() is not None) if popen is not None else not alive(pid):
            return
        time.sleep(0.1)
    for p in [pid, *children]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if popen is not None:
        popen.wait()


class Processes:
    """The processes the benchmark started; `cleanup` stops whatever is left of them."""

    def __init__(self):
        self.running = []  # (pid, Popen or None for a daemon), in start order

    def spawn(self, cmd, **kwargs):
        """Starts a child process and keeps track of it."""
        popen = subprocess.Popen(cmd, **kwargs)
        self.running.append((popen.pid, popen))
        return popen

    def adopt(self, pid):
        """Keeps track of a daemon (an nginx master, not a child of this program)."""
        self.running.append((pid, None))

    def finish(self, popen):
        """Waits for a child to exit on its own; its exit status."""
        status = popen.wait()
        self.forget(popen.pid)
        return status

    def stop(self, pid):
        """Stops one tracked process."""
        for known, popen in self.running:
            if known == pid:
                stop_pid(pid, popen)
        self.forget(pid)

    def forget(self, pid):
        self.running = [(p, popen) for p, popen in self.running if p != pid]

    def cleanup(self):
        """Stops everything still running, latest first; then any nginx of the work directory
        whose pid was not known yet when the run stopped (its pid file, then any process whose
        command line names the work directory)."""
        for pid, popen in reversed(self.running):
            stop_pid(pid, popen)
        self.running = []
        marker = f"{WORK}/"
        for name in ("backend", "proxy"):
            try:
                pid = int((WORK / name / "logs" / "nginx.pid").read_text())
            except (OSError, ValueError):
                continue
            if marker in cmdline(pid):
                stop_pid(pid)
        for pid in all_pids():
            line = cmdline(pid)
            if pid != os.getpid() and "nginx" in line and marker in line:
                stop_pid(pid)


# --- build, ports, limits ----------------------------------------------------------------------

def build():
    """cargo build --release; the bundled nginx binary the module was built against."""
    say("building (cargo build --release)")
    subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    candidates = list((ROOT / "target" / "release" / "build").glob("nginx-sys-*/out/objs/nginx"))
    nginx = max(candidates, key=lambda p: p.stat().st_mtime, default=None)
    if nginx is None or not os.access(nginx, os.X_OK):
        sys.exit("no vendored nginx binary: run cargo build --release first")
    if not MODULE.is_file():
        sys.exit(f"no module at {MODULE}")
    return nginx


def free_base(count):
    """A base port such that base..base+count-1 are all free on 127.0.0.1, below the
    ephemeral range (so that outgoing connections never take them)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except OSError:
        low = 32768
    hi = min(low, 65536) - count - 1
    for _ in range(100):
        base = random.randrange(10000, hi)
        socks = []
        try:
            for p in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    sys.exit("no free range of %d ports found" % count)


def keepalive_of(n):
    """The keepalive connections cached by an upstream of n servers."""
    return 2 * n + 32


def raise_nofile():
    """Raises the open-file limit for this process and the nginx it starts; the limit."""
    # Backends: MAX_SERVERS listening sockets plus one kept-alive connection per server and
    # upstream, more for the N=2 and N=64 cases under wrk's concurrency.
    need = MAX_SERVERS + 64 + sum(2 * keepalive_of(n) + CONNECTIONS for n in SERVERS)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < need:
        print(f"the hard limit of open files is {hard}; the benchmark needs about {need}",
              file=sys.stderr)
        print(f"(raise it, e.g. ulimit -Hn {need} as root, and run again)", file=sys.stderr)
        sys.exit(1)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 65536 if soft == resource.RLIM_INFINITY else soft


# --- nginx configurations ----------------------------------------------------------------------

def main_context(setup, extra_lines):
    """The main context and the start of the http block, `extra_lines` after worker_processes."""
    return ["worker_processes 1;", *extra_lines, setup.user_line,
            f"worker_rlimit_nofile {setup.nofile};",
            "error_log logs/error.log;",
            "pid logs/nginx.pid;",
            f"events {{ worker_connections {setup.worker_connections}; }}",
            "http {",
            "    access_log off;",
            "    keepalive_requests 100000000;",
            "    keepalive_timeout 600s;"]


def backend_conf(setup):
    """Backends: one nginx, no module, MAX_SERVERS ports."""
    lines = main_context(setup, [])
    lines.append("    server {")
    lines += [f"        listen 127.0.0.1:{setup.base + i};" for i in range(MAX_SERVERS)]
    lines += ['        location / { return 200 "ok"; }', "    }", "}"]
    return "\n".join(lines) + "\n"


def proxy_conf(setup, port, extra=""):
    """The proxy: the module, one worker, rr_N and jr_N for every N."""
    lines = [f"load_module {MODULE};", *main_context(setup, [extra])]
    for n in SERVERS:
        for kind in ("rr", "jr", "jc"):
            lines.append(f"    upstream {kind}_{n} {{")
            for i in range(1, n + 1):
                srun = f" srun_id=s{i:04d}" if kind != "rr" else ""
                lines.append(f"        server 127.0.0.1:{setup.base + i - 1}{srun};")
            if kind != "rr":
                lines.append("        jvm_route $cookie_JSESSIONID reverse;")
            if kind == "jc":
                lines.append(f"        {JC_CHECK}")
            lines += [f"        keepalive {keepalive_of(n)};",
                      "        keepalive_requests 100000000;",
                      "        keepalive_timeout 600s;",
                      "    }"]
    # One server (port) per upstream, each with the one location `/`: every case finds its
    # location alike (in one tree of prefix locations their places differ, and the lookup
    # with them, by about 70 instructions).
    for i, upstream in enumerate(UPSTREAMS):
        lines += ["    server {",
                  f"        listen 127.0.0.1:{port + 1 + i};",
                  "        proxy_http_version 1.1;",
                  '        proxy_set_header Connection "";',
                  f"        location / {{ proxy_pass http://{upstream}; }}",
                  "    }"]
    lines += ["    server {",
              f"        listen 127.0.0.1:{port};",
              "        location = /jvm-route-status { jvm_route_status; }", "    }", "}"]
    return "\n".join(lines) + "\n"


def write_configs(setup):
    """The backends', the proxy's and the proxy-under-callgrind's nginx.conf."""
    (WORK / "backend" / "nginx.conf").write_text(backend_conf(setup))
    (WORK / "proxy" / "nginx.conf").write_text(proxy_conf(setup, setup.proxy_port))
    (WORK / "callgrind" / "nginx.conf").write_text(
        proxy_conf(setup, setup.cg_port, "master_process off;\ndaemon off;"))


def nginx_args(setup, directory):
    """nginx's command line for the configuration in `directory`."""
    return [str(setup.nginx), "-p", str(directory), "-c", str(directory / "nginx.conf"),
            "-e", str(directory / "logs" / "error.log")]


def start_nginx(setup, procs, directory):
    """Tests and starts the (daemon) nginx of `directory`; the pid of its master."""
    subprocess.run(nginx_args(setup, directory) + ["-t", "-q"], check=True)
    subprocess.run(nginx_args(setup, directory), check=True)
    # The daemon writes its pid file after the command returns.
    for _ in range(100):
        try:
            pid = int((directory / "logs" / "nginx.pid").read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            time.sleep(0.1)
            continue
        procs.adopt(pid)
        return pid
    try:
        tail = "\n".join((directory / "logs" / "error.log").read_text().splitlines()[-3:])
    except OSError:
        tail = ""
    sys.exit(f"nginx in {directory} did not start: {tail}")


# --- requests ----------------------------------------------------------------------------------

def case_port(port, n, case):
    """The port of a case's server in the proxy whose status page is on `port`."""
    if case.startswith("rr"):
        kind = "rr"
    else:
        kind = "jc" if case == "hit_checked" else "jr"
    return port + 1 + UPSTREAMS.index(f"{kind}_{n}")


def middle_server(n):
    """The srun_id of the server a sticky hit names."""
    return "s%04d" % max(n // 2, 1)


def case_cookie(n, case):
    """The Cookie header a case sends, or None."""
    if case in ("hit", "hit_checked", "rr_cookie"):
        return f"JSESSIONID={SESSION_HEX}.{middle_server(n)}"
    if case in ("unknown", "rr_unknown"):
        return f"JSESSIONID={SESSION_HEX}.nosuch"
    return None


def listening(port):
    """Something listens on 127.0.0.1:port (read from /proc, without connecting)."""
    want = ":%04X" % port
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[1].endswith(want) and f[3] == "0A":
                return True
    return False


def wait_listen(port, timeout):
    """Waits without connecting (a probe connection would be counted by callgrind)."""
    end = time.time() + timeout
    while time.time() < end:
        if listening(port):
            return
        time.sleep(0.05)
    sys.exit("nothing listens on port %d after %ss" % (port, timeout))


def send(port, path, cookie, count):
    """Exactly `count` GET requests on ONE keepalive connection; each must be 200 "ok"."""
    headers = {"Cookie": cookie} if cookie else {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.connect()
    sock = conn.sock
    for i in range(count):
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200 or body != b"ok":
            sys.exit("request %d to %s: HTTP %d %r" % (i, path, r.status, body[:200]))
        if r.will_close or conn.sock is not sock:
            sys.exit("request %d to %s: the connection was not kept alive" % (i, path))
    conn.close()


def status_json(port):
    """The proxy's status page: its upstreams by name."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/jvm-route-status?format=json")
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        sys.exit("status page: HTTP %d" % r.status)
    return {u["name"]: u for u in json.loads(data)["upstreams"]}


def check_routing(port):
    """Each case routes as it should: the proxy's own counters say so."""
    n_req = 5

    def hits(upstream):
        return {s["srun_id"]: s["hits"] for s in upstream["servers"]}

    for n in SERVERS:
        mid = middle_server(n)
        before = status_json(port)["jr_%d" % n]
        for case in CASES:
            if case != "hit_checked":
                send(case_port(port, n, case), "/", case_cookie(n, case), n_req)
        after = status_json(port)["jr_%d" % n]
        hits_before = hits(before)
        dh = {k: v - hits_before.get(k, 0) for k, v in hits(after).items()
              if v != hits_before.get(k, 0)}
        got = (dh,
               after["requests_with_session"] - before["requests_with_session"],
               after["requests_without_session"] - before["requests_without_session"],
               after["unknown_routes"] - before["unknown_routes"])
        want = ({mid: n_req}, 2 * n_req, n_req, n_req)
        if got != want:
            sys.exit("jr_%d does not route as expected: got hits/with/without/unknown %r, want %r"
                     % (n, got, want))
        print("  jr_%d: %d sticky hits all on %s, %d without session, %d unknown routes: ok"
              % (n, n_req, mid, n_req, n_req))
        before = hits(status_json(port)["jc_%d" % n])
        send(case_port(port, n, "hit_checked"), "/", case_cookie(n, "hit_checked"),
             n_req)
        after = hits(status_json(port)["jc_%d" % n])
        dh = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        if dh != {mid: n_req}:
            sys.exit("jc_%d does not route as expected: hits %r" % (n, dh))
        print("  jc_%d (checked): %d sticky hits all on %s: ok" % (n, n_req, mid))


# --- throughput --------------------------------------------------------------------------------

def run_wrk(setup, procs, n, case, seconds, out):
    """wrk on one case for `seconds`, its output in `out`."""
    cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    cookie = case_cookie(n, case)
    if cookie:
        cmd += ["-H", f"Cookie: {cookie}"]
    cmd.append(f"http://127.0.0.1:{case_port(setup.proxy_port, n, case)}/")
    with open(out, "w") as f:
        status = procs.finish(procs.spawn(cmd, stdout=f, stderr=subprocess.STDOUT))
    if status != 0:
        sys.stderr.write(out.read_text())
        sys.exit(1)


def wrk_rps(path):
    """Requests/sec from a wrk output, as wrk wrote it; warns of errors wrk counted."""
    text = path.read_text()
    m = re.search(r"Requests/sec:\s*([0-9.]+)", text)
    if not m:
        sys.exit("no Requests/sec in %s:\n%s" % (path, text))
    problems = [l.strip() for l in text.splitlines()
                if "Non-2xx" in l or "Socket errors" in l]
    if problems:
        print("  warning: %s: %s" % (path.name, "; ".join(problems)), file=sys.stderr)
    return m.group(1)


def measure_throughput(settings, setup, procs, tsv):
    """Warm-up, then the rounds; one line per measurement in `tsv` (round, N, case, req/s)."""
    say("warm-up: 1 s per case (opens the keepalive connections to the backends)")
    for n in SERVERS:
        for case in CASES:
            run_wrk(setup, procs, n, case, 1, WORK / "wrk" / f"warmup.{n}.{case}.txt")
    say(f"throughput: wrk -t1 -c{CONNECTIONS} -d{settings.duration}s, {settings.rounds} rounds "
        f"x {len(SERVERS)} N x {len(CASES)} cases")
    with open(tsv, "w") as f:
        for r in range(1, settings.rounds + 1):
            line = f"  round {r}/{settings.rounds}:"
            for n in SERVERS:
                for k in range(len(CASES)):
                    case = CASES[(k + r - 1) % len(CASES)]
                    out = WORK / "wrk" / f"r{r}.{n}.{case}.txt"
                    run_wrk(setup, procs, n, case, settings.duration, out)
                    rps = wrk_rps(out)
                    f.write(f"{r}\t{n}\t{case}\t{rps}\n")
                    f.flush()
                    line += f" {n}/{case}={rps.rsplit('.', 1)[0]}"
            print(line)


def fmt_int(x):
    """A count rounded, with thousands separators."""
    return "{:,}".format(int(round(x)))


def throughput_report(tsv):
    """req/s per case (min/median/max) and the ratio to rr of the same N in the same round."""
    rps = defaultdict(dict)  # (n, case) -> {round: rps}
    with open(tsv) as f:
        for line in f:
            r, n, case, v = line.split()
            rps[(int(n), case)][int(r)] = float(v)
    print("%-6s %-8s %10s %10s %10s   %-24s" % ("N", "case", "req/s min", "median", "max",
                                              "ratio to rr: min/median/max"))
    for n in SERVERS:
        for case in CASES:
            vals = rps[(n, case)]
            rounds = sorted(vals)
            ratios = [vals[r] / rps[(n, "rr")][r] for r in rounds if r in rps[(n, "rr")]]
            v = [vals[r] for r in rounds]
            ratio = ("%.3f / %.3f / %.3f" % (min(ratios), statistics.median(ratios), max(ratios))
                     if case != "rr" else "1 (baseline)")
            print("%-6d %-8s %10s %10s %10s   %s" % (n, case, fmt_int(min(v)),
                                                    fmt_int(statistics.median(v)), fmt_int(max(v)),
                                                    ratio))
        print()


# --- callgrind ---------------------------------------------------------------------------------

def measure_instructions(settings, setup, procs, cg_dir):
    """Per N and case, the proxy under callgrind for K and for K+D requests."""
    say(f"instructions: callgrind, per case {settings.cg_warm} and "
        f"{settings.cg_warm + settings.cg_measured} requests on one keepalive connection")
    for n in SERVERS:
        for case in CG_CASES:
            for count in (settings.cg_warm, settings.cg_warm + settings.cg_measured):
                t0 = time.monotonic_ns()
                out = cg_dir / f"cg.{n}.{case}.{count}"
                log = cg_dir / "logs" / f"valgrind.{n}.{case}.{count}.log"
                with open(log, "w") as f:
                    vg = procs.spawn(["valgrind", "--tool=callgrind",
                                      f"--callgrind-out-file={out}",
                                      *nginx_args(setup, cg_dir)],
                                     stdout=f, stderr=subprocess.STDOUT)
                wait_listen(setup.cg_port, 120)
                send(case_port(setup.cg_port, n, case), "/", case_cookie(n, case), count)
                time.sleep(0.5)  # let nginx see the client's close before it is stopped
                vg.terminate()
                if procs.finish(vg) != 0:
                    sys.stderr.write(log.read_text(errors="replace"))
                    sys.exit(1)
                if not out.is_file() or out.stat().st_size == 0:
                    sys.exit(f"callgrind wrote no profile for {n}/{case}/{count}")
                ms = (time.monotonic_ns() - t0) // 1_000_000
                print("  N=%-5s %-9s %5d requests: %d.%d s"
                      % (n, case, count, ms // 1000, ms % 1000 // 100))


# glibc's allocator: its functions (self cost) and the entry points whose calls are counted.
ALLOCATOR = re.compile(r"^(malloc|free|calloc|realloc|posix_memalign|memalign|aligned_alloc|"
                       r"_int_\w+|_mid_memalign\S*|unlink_chunk\S*|malloc_consolidate|"
                       r"sysmalloc|systrim|tcache_\w+|arena_\w+|__libc_\w+)$")
ALLOCATOR_ENTRIES = {"malloc", "free", "calloc", "realloc", "posix_memalign", "memalign",
                     "aligned_alloc"}


def parse_callgrind(path, module_marker):
    """Self cost and call costs per function from a callgrind output file (Ir only)."""
    tables = {"ob": {}, "fl": {}, "fn": {}}
    kind_of = {"ob": "ob", "cob": "ob", "fl": "fl", "fi": "fl", "fe": "fl", "cfi": "fl",
               "cfl": "fl", "fn": "fn", "cfn": "fn"}

    def name(kind, rest):
        rest = rest.strip()
        m = re.match(r"\((\d+)\)(?:\s(.*))?$", rest)
        if not m:
            return rest
        if m.group(2) is not None:
            tables[kind][m.group(1)] = m.group(2)
        return tables[kind][m.group(1)]

    def is_module(obj):
        return obj is not None and module_marker in obj

    def is_libc(obj):
        return obj is not None and "libc.so" in obj

    selfc = defaultdict(int)
    calls = defaultdict(int)
    ob = fn = None
    cob = cfn = None
    in_call = False
    total = None
    alloc_calls = 0
    with open(path, errors="replace") as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if in_call:
                    calls[(ob, fn, cob if cob is not None else ob, cfn)] += cost
                    in_call = False
                    cob = cfn = None
                else:
                    selfc[(ob, fn)] += cost
                continue
            key, _, rest = line.partition("=")
            if key == "ob":
                ob = name("ob", rest)
            elif key == "fn":
                fn = name("fn", rest)
            elif key == "cob":
                cob = name("ob", rest)
            elif key == "cfn":
                cfn = name("fn", rest)
            elif key in ("fl", "fi", "fe", "cfi", "cfl"):
                name(kind_of[key], rest)
            elif key == "calls":
                in_call = True
                # Calls into the allocator from outside it (nginx's pools, the module...).
                callee_ob = cob if cob is not None else ob
                if (is_libc(callee_ob) and cfn in ALLOCATOR_ENTRIES
                        and not (is_libc(ob) and ALLOCATOR.match(fn or ""))):
                    alloc_calls += int(rest.split()[0])
            elif line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
    own = sum(v for (o, _), v in selfc.items() if is_module(o))
    for (o, f, co, cf), v in calls.items():
        if not is_module(o) or is_module(co):
            continue
        if WRAPPED.search(cf or "") or (f or "").endswith("_filter") and (cf or "").endswith("_filter"):
            continue  # handed on: the wrapped method, the next filter
        own += v
    incl = sum(v for (o, f), v in selfc.items() if is_module(o) and ENTRY.search(f or ""))
    incl += sum(v for (o, f, _, _), v in calls.items() if is_module(o) and ENTRY.search(f or ""))
    alloc = sum(v for (o, f), v in selfc.items() if is_libc(o) and ALLOCATOR.match(f or ""))
    return {"total": total, "module_incl": incl, "module_own": own, "alloc": alloc,
            "alloc_calls": alloc_calls}


def annotate_incl(path):
    """Inclusive Ir of the module's balancer callbacks, as callgrind_annotate reports them."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(path)],
                         capture_output=True, text=True, check=True).stdout
    total = 0
    seen = []
    for line in out.splitlines():
        m = re.match(r"\s*([0-9,]+)\s+(?:\([^)]*\)\s+)?\S*?:(\S.*?)(?:\s\[.*\])?$", line)
        if m and ENTRY.search(m.group(2).strip()):
            total += int(m.group(1).replace(",", ""))
            seen.append(m.group(2).strip())
    return total, seen


def callgrind_report(cg_dir, warm, measured, out_tsv):
    """Instructions per request per case (the K+D run minus the K run, / D), written to
    `out_tsv` (N, case, total, module callbacks, module own) and printed as a table."""
    rows = {}
    for n in SERVERS:
        for case in CG_CASES:
            a = cg_dir / f"cg.{n}.{case}.{warm}"
            b = cg_dir / f"cg.{n}.{case}.{warm + measured}"
            pa, pb = parse_callgrind(a, MODULE_MARKER), parse_callgrind(b, MODULE_MARKER)
            aa, sa = annotate_incl(a)
            ab, sb = annotate_incl(b)

            def per(key):
                return (pb[key] - pa[key]) / measured

            rows[(n, case)] = {"total": per("total"), "own": per("module_own"),
                               "incl": (ab - aa) / measured, "incl_parsed": per("module_incl"),
                               "alloc": per("alloc"), "alloc_calls": per("alloc_calls"),
                               "entries": sorted(set(sa) | set(sb))}
    with open(out_tsv, "w") as f:
        for (n, case), r in rows.items():
            f.write("%d\t%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.2f\n" % (
                n, case, r["total"], r["incl"], r["own"], r["alloc"], r["alloc_calls"]))
    # The same request on round robin: the baseline that differs from the case by the module only.
    same = {"hit": "rr_cookie", "hit_checked": "rr_cookie", "unknown": "rr_unknown", "none": "rr"}
    print("%-6s %-10s %12s %8s %14s %18s %12s %17s" % ("N", "case", "Ir/request", "vs rr",
                                                       "vs rr, same", "module callbacks",
                                                       "module own", "allocator (calls)"))
    for n in SERVERS:
        base = rows[(n, "rr")]["total"]
        for case in CG_CASES:
            r = rows[(n, case)]
            twin = rows.get((n, same.get(case, case)))
            print("%-6d %-10s %12s %8s %14s %18s %12s %17s" % (
                n, case, fmt_int(r["total"]), "%.4f" % (r["total"] / base),
                "%.4f" % (r["total"] / twin["total"]) if twin else "-",
                fmt_int(r["incl"]), fmt_int(r["own"]),
                "%s (%.1f)" % (fmt_int(r["alloc"]), r["alloc_calls"])))
        print()
    print("vs rr, same = against round robin receiving the same request (the same Cookie header):")
    print("  hit and hit_checked against rr_cookie, unknown against rr_unknown, none against rr.")
    print("allocator = Ir in glibc's malloc and free per request (self), and their calls per")
    print("  request: the same calls cost more or less with the heap's history, which differs from")
    print("  one profiled process to the next (the targets below also compare without it).")
    mismatch = [(k, r["incl"], r["incl_parsed"]) for k, r in rows.items()
                if abs(r["incl"] - r["incl_parsed"]) > 1]
    if mismatch:
        print("note: callgrind_annotate and the raw profile disagree on the callbacks' inclusive "
              "cost: %r" % mismatch)
    entries = sorted({e for r in rows.values() for e in r["entries"]})
    print("module callbacks = inclusive Ir of %s per request (callgrind_annotate --inclusive=yes);"
          % (", ".join(e.split("::")[-1] for e in entries) or "none found"))
    print("  it includes the wrapped round robin's init/get/free that they call.")
    print("module own = Ir executed in the module's .so (self) plus the nginx/libc functions it")
    print("  calls itself (ngx_pcalloc, locks, memcmp...), without the wrapped round robin and the")
    print("  next output filters; 'rr' shows what the module costs a request to an upstream without")
    print("  jvm_route (nothing: its response filters are installed only with failover=off).")


# --- the checks' own cost ---------------------------------------------------------------------

# How the checks' cost is measured: a new connection for each check (the check module's
# default), and connections that carry CHECKER_KEEPALIVE checks each (HTTP/1.1).
CHECKER_KEEPALIVE = 100
CHECKER_MODES = (
    ("connection per check", '"GET / HTTP/1.0\\r\\n\\r\\n"', 1),
    (f"check_keepalive_requests {CHECKER_KEEPALIVE}", '"GET / HTTP/1.1\\r\\n\\r\\n"',
     CHECKER_KEEPALIVE),
)


def checker_conf(setup, port, send, keepalive):
    """One worker checking CHECKER_SERVERS backends every CHECKER_INTERVAL ms; no traffic."""
    lines = [f"load_module {MODULE};", *main_context(setup, [])]
    lines.append("    upstream checked {")
    for i in range(CHECKER_SERVERS):
        lines.append(f"        server 127.0.0.1:{setup.base + i % MAX_SERVERS} srun_id=c{i:04d};")
    lines += ["        jvm_route $cookie_JSESSIONID reverse;",
              f"        check interval={CHECKER_INTERVAL} rise=1 fall=1 timeout=1000 type=http;",
              f"        check_http_send {send};",
              f"        check_keepalive_requests {keepalive};",
              "    }",
              "    server {",
              f"        listen 127.0.0.1:{port};",
              "        location = /jvm-route-status { jvm_route_status; }",
              "    }", "}"]
    return "\n".join(lines) + "\n"


def checks_done(port):
    """Checks run so far, summed over every address of the status page."""
    total = 0
    for u in status_json(port).values():
        for srv in u["servers"]:
            for p in srv["peers"]:
                if p.get("check"):
                    total += p["check"]["checks"]
    return total


def measure_checker(setup, procs, mode):
    """The CPU time of one worker checking CHECKER_SERVERS servers, over CHECKER_SECONDS."""
    name, send, keepalive = mode
    directory = WORK / "checker"
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    port = setup.cg_port
    (directory / "nginx.conf").write_text(checker_conf(setup, port, send, keepalive))
    say(f"the checks' own cost: {CHECKER_SERVERS} servers checked every {CHECKER_INTERVAL} ms "
        f"(type=http, {name}), one worker, no traffic, {CHECKER_SECONDS} s")
    master = start_nginx(setup, procs, directory)
    wait_listen(port, 10)
    time.sleep(3)
    workers = child_pids(master)
    if len(workers) != 1:
        sys.exit("the checker nginx has %d workers, expected 1" % len(workers))
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu():
        fields = proc_stat(workers[0])
        return int(fields[11]) / ticks, int(fields[12]) / ticks

    (u0, s0), n0, t0 = cpu(), checks_done(port), time.monotonic()
    time.sleep(CHECKER_SECONDS)
    (u1, s1), n1, t1 = cpu(), checks_done(port), time.monotonic()
    procs.stop(master)
    wall = t1 - t0
    return {"cpu": (u1 - u0 + s1 - s0) / wall * 100, "user": (u1 - u0) / wall * 100,
            "system": (s1 - s0) / wall * 100, "checks": (n1 - n0) / wall}


# --- reports -----------------------------------------------------------------------------------

def targets_report(tsv):
    """The project's performance targets, MET or NOT MET, from the instruction counts."""
    ir, own, alloc, calls = {}, {}, {}, {}
    with open(tsv) as f:
        for line in f:
            n, case, total, _incl, module_own, allocator, allocator_calls = line.split("\t")
            ir[(int(n), case)] = float(total)
            own[(int(n), case)] = float(module_own)
            alloc[(int(n), case)] = float(allocator)
            calls[(int(n), case)] = float(allocator_calls)

    def neutral(key, base):
        """The case's count with the allocator's instructions per call of `base`."""
        per_call = alloc[base] / calls[base] if calls[base] else 0
        return ir[key] - alloc[key] + per_call * calls[key]

    def target(ok, text, detail):
        print("  [%s] %s\n        %s" % ("MET" if ok else "NOT MET", text, detail))

    rr2, rc2, hit2 = ir[(2, "rr")], ir[(2, "rr_cookie")], ir[(2, "hit")]
    hit1024, rr1024 = ir[(1024, "hit")], ir[(1024, "rr")]
    for case, text in (("hit", "a sticky hit costs"),
                       ("hit_checked", "with active health checks, a sticky hit costs")):
        key, base = (2, case), (2, "rr_cookie")
        whole, even = ir[key], neutral(key, base)
        same_calls = abs(calls[key] - calls[base]) < 0.05
        target(same_calls and even <= rc2 * 1.02,
               "%s at most 1.02x round robin receiving the same request (the same Cookie "
               "header) at 2 servers" % text,
               "%s %s vs rr_cookie %s Ir/request: %+.2f%%, with the allocator's instructions per "
               "call of rr_cookie (%.1f calls per request each%s); the whole count, allocator "
               "included: %s, %+.2f%%"
               % (case, fmt_int(even), fmt_int(rc2), (even / rc2 - 1) * 100, calls[key],
                  "" if same_calls else ", rr_cookie %.1f: NOT the same" % calls[base],
                  fmt_int(whole), (whole / rc2 - 1) * 100))
    print("        for information: nginx's own cost of the Cookie header is %+.2f%% over rr; "
          "hit against plain round robin: %+.2f%%" % ((rc2 / rr2 - 1) * 100,
                                                       (hit2 / rr2 - 1) * 100))
    own2, own1024 = own[(2, "hit")], own[(1024, "hit")]
    target(own1024 <= own2 * 1.01,
           "the module's cost of a sticky hit does not grow from 2 to 1024 servers (allowing 1%)",
           "module own at 1024: %s vs at 2: %s Ir/request (%+.2f%%); whole request: %s vs %s "
           "(%+.2f%%)" % (fmt_int(own1024), fmt_int(own2), (own1024 / own2 - 1) * 100,
                          fmt_int(hit1024), fmt_int(hit2), (hit1024 / hit2 - 1) * 100))
    target(hit1024 < rr1024,
           "a sticky hit at 1024 servers is cheaper than round robin there",
           "hit %s vs rr %s Ir/request: %.3fx"
           % (fmt_int(hit1024), fmt_int(rr1024), hit1024 / rr1024))
    print("  (whole-request counts move by about 600 Ir wherever a request needs one more 4 KB")
    print("  block in its pool: at 1024 servers round robin's per-request init allocates a bitmap")
    print("  of tried peers, and rr, rr_cookie and hit all pay for that block.)")


def machine_report(settings, setup, took):
    """Where and how the figures were taken."""
    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)

    head = git("rev-parse", "--short", "HEAD")
    commit = head.stdout.strip() if head.returncode == 0 else "?"
    if git("diff", "--quiet", "HEAD", "--", "src").returncode != 0:
        commit += " (src/ modified)"
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    version = subprocess.run([str(setup.nginx), "-v"], capture_output=True, text=True)
    version = re.sub(r"^nginx version: ", "", (version.stdout + version.stderr).strip(),
                     flags=re.M)
    total = settings.cg_warm + settings.cg_measured
    say("machine")
    print(f"  command:  {settings.command}")
    print(f"  date:     {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    print(f"  commit:   {commit}")
    print(f"  cpus:     {len(os.sched_getaffinity(0))} x {model}")
    print(f"  load:     {load} (1/5/15 min, at the end)")
    print(f'  nginx:    {version} (bundled), proxy: 1 worker; backends: 1 nginx worker, '
          f'return 200 "ok"')
    print(f"  wrk:      -t1 -c{CONNECTIONS} -d{settings.duration}s, {settings.rounds} rounds; "
          f"callgrind: ({total} - {settings.cg_warm} requests) / {settings.cg_measured}")
    print(f"  took:     {took} s")


# --- the run -----------------------------------------------------------------------------------

def run(settings, procs):
    """The whole benchmark; its processes are tracked in `procs`."""
    started = int(time.time())
    nginx = build()
    shutil.rmtree(WORK, ignore_errors=True)
    for sub in ("backend/logs", "proxy/logs", "callgrind/logs", "wrk"):
        (WORK / sub).mkdir(parents=True, exist_ok=True)

    base = free_base(MAX_SERVERS + 2 * (1 + len(UPSTREAMS)))
    nofile = raise_nofile()
    setup = Setup(nginx=nginx, base=base, nofile=nofile,
                  user_line="user root;" if os.geteuid() == 0 else "")
    write_configs(setup)

    say(f"starting backends (1 nginx, {MAX_SERVERS} ports from {base}) and the proxy "
        f"(1 worker, module) on :{setup.proxy_port}")
    start_nginx(setup, procs, WORK / "backend")
    wait_listen(base + MAX_SERVERS - 1, 10)
    proxy_pid = start_nginx(setup, procs, WORK / "proxy")
    wait_listen(setup.proxy_port, 10)

    say("checking that every case routes as it should (the proxy's status page)")
    check_routing(setup.proxy_port)

    rps_tsv = WORK / "throughput.tsv"
    measure_throughput(settings, setup, procs, rps_tsv)
    procs.stop(proxy_pid)

    cg_dir = WORK / "callgrind"
    measure_instructions(settings, setup, procs, cg_dir)

    checkers = [(mode[0], measure_checker(setup, procs, mode)) for mode in CHECKER_MODES]

    print()
    machine_report(settings, setup, int(time.time()) - started)
    print()
    say("throughput (req/s through the proxy; ratio to round robin of the same N in the same round)")
    throughput_report(rps_tsv)
    say("instructions per request (callgrind, whole proxy process)")
    instructions_tsv = WORK / "instructions.tsv"
    callgrind_report(cg_dir, settings.cg_warm, settings.cg_measured, instructions_tsv)
    print()
    say("the checks' own cost")
    for name, checker in checkers:
        print(f"  one worker checking {CHECKER_SERVERS} servers every {CHECKER_INTERVAL} ms "
              f"(type=http, {name}): {checker['checks']:.0f} checks/s, {checker['cpu']:.2f}% of "
              f"a core ({checker['user']:.2f}% in nginx, {checker['system']:.2f}% in the kernel, "
              f"which on 127.0.0.1 also does the backend's side of each TCP connection)")
    print()
    say("targets")
    targets_report(instructions_tsv)
    for name, checker in checkers:
        print("  [%s] one worker checking %d servers every second costs under 5%% of a core (%s)\n"
              "        %.2f%% (%.0f checks/s)" % ("MET" if checker["cpu"] < 5 else "NOT MET",
                                              CHECKER_SERVERS, name, checker["cpu"],
                                              checker["checks"]))
    print()
    print(f"raw data: {WORK} (wrk outputs, throughput.tsv, instructions.tsv, callgrind profiles)")


def on_signal(signum, frame):
    """Turns SIGINT and SIGTERM into an exception, so that the cleanup runs."""
    raise Interrupted()


def main(argv):
    """Parses the arguments, runs the benchmark, stops every process it started."""
    sys.stdout.reconfigure(line_buffering=True)
    settings = parse_args(argv)
    procs = Processes()
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        run(settings, procs)
    except Interrupted:
        print("interrupted", file=sys.stderr)
        return 130
    except subprocess.CalledProcessError as e:
        print(f"failed ({e.returncode}): {shlex.join(map(str, e.cmd))}", file=sys.stderr)
        return e.returncode if 0 < e.returncode < 256 else 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
