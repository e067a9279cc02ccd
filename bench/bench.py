#!/usr/bin/env python3
"""Benchmark harness: hermes-ssh-gateway vs OpenSSH's sshd, side by side (see bench/run.sh).

Both servers run the same programs through /bin/sh: the gateway with `exec = "args"` and the
command `sh -c 'eval "$*"'`, sshd with an authorized_keys `command="/bin/sh -c ..."`. Every
figure is measured with the real OpenSSH client, alternating gateway and sshd runs.
"""
import argparse
import json
import os
import pty
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATEWAY = os.path.join(ROOT, "target", "release", "hermes-ssh-gateway")
SSHD = "/usr/sbin/sshd"

procs = []
ONLY = set()
REPS = 0

# A VM's hypervisor can take CPU time away in the middle of a run ("steal" in /proc/stat). On the
# machine the README's numbers come from, PTY throughput and echo p99 followed steal more closely
# than anything the gateway or sshd did: 100 MB through `script` took 6.5 s at 4% steal and 11 s
# at 26%. So a run during which more than MAX_STEAL % of the CPU time was stolen is repeated (at
# most RETRIES times, and within each group's RERUN_BUDGET seconds, so one noisy group cannot eat
# another's) and the quietest attempt is kept. The steal of every kept run is reported, so a
# reader can judge the numbers.
MAX_STEAL = 5.0
RETRIES = 3
RERUN_BUDGET = {"connect": 20.0, "pty": 100.0, "channel": 40.0, "echo": 30.0}
STEAL = {}  # measure group -> steal % of each kept run
RERUNS = {}  # measure group -> [reruns, seconds spent on them]


def want(group):
    return not ONLY or group in ONLY


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def start(cmd, **kw):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    procs.append(p)
    return p


def stop_all():
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def steal_ticks():
    """Clock ticks this VM's CPUs have spent waiting for the hypervisor (0 on bare metal)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) if len(fields) > 8 else 0


def quiet(group, fn):
    """Runs fn(); while too much CPU time was stolen during it, runs it again (bounded) and
    returns the result of the attempt with the least steal."""
    best = None
    for _ in range(1 + RETRIES):
        before, t0 = steal_ticks(), time.monotonic()
        value = fn()
        wall = time.monotonic() - t0
        stolen = 100.0 * (steal_ticks() - before) / os.sysconf("SC_CLK_TCK") / ((os.cpu_count() or 1) * wall)
        if best is None or stolen < best[1]:
            best = (value, stolen)
        spent = RERUNS.setdefault(group, [0, 0.0])
        if stolen <= MAX_STEAL or spent[1] + wall > RERUN_BUDGET.get(group, 0.0):
            break
        spent[0] += 1
        spent[1] += wall
    STEAL.setdefault(group, []).append(best[1])
    return best[0]


def pct(values, q):
    v = sorted(values)
    if not v:
        return float("nan")
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


class Target:
    def __init__(self, name, port, pid_fn, extra_ssh=()):
        self.name, self.port, self.pid_fn, self.extra = name, port, pid_fn, list(extra_ssh)

    def ssh(self, key, *args, tty=False):
        base = ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-i", key,
                "-p", str(self.port)] + self.extra
        base += ["-tt"] if tty else ["-T"]
        return base + ["root@127.0.0.1"] + list(args)


def server_pids(target):
    return target.pid_fn()


def tree_pids(root):
    """root and all its descendants (for sshd's per-session processes)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(rest[1]), []).append(int(d))
        except (OSError, IndexError):
            pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def mem_kb(pids, field):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup" if field == "Pss" else f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # utime stime cutime cstime: children's time counts once they are reaped (sshd sessions).
    ticks = sum(int(x) for x in rest[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def timed(cmd, **kw):
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr.decode(errors='replace')}")
    return dt


def connect_latency(t, key, n):
    return [timed(t.ssh(key, "true")) * 1000 for _ in range(n)]


def reattach_latency(t, key, n):
    """ms from starting `ssh -tt host attach ID` until the restored screen arrives (a marker the
    detached program printed), for a session whose client was killed."""
    first = subprocess.Popen(t.ssh(key, "echo REATTACH-MARK; exec sleep 900", tty=True),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    read_until(first.stdout, b"REATTACH-MARK", 20)
    first.kill()
    first.wait()
    # The only detached session (every run ends its own).
    ids, deadline = [], time.time() + 10
    while not ids and time.time() < deadline:
        listed = subprocess.run(t.ssh(key, "sessions"), capture_output=True, timeout=20).stdout.decode()
        ids = [s["id"] for s in map(json.loads, listed.splitlines()) if s["state"] == "detached"]
        time.sleep(0.05)
    out = []
    for _ in range(n if ids else 0):
        start = time.perf_counter()
        c = subprocess.Popen(t.ssh(key, "attach", ids[0], tty=True), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if read_until(c.stdout, b"REATTACH-MARK", 20):
            out.append((time.perf_counter() - start) * 1000)
        c.kill()
        c.wait()
    subprocess.run(t.ssh(key, "end", ids[0]) if ids else ["true"], capture_output=True, timeout=20)
    return out


def read_until(stream, needle, timeout):
    """Reads `stream` until `needle` appears (True) or `timeout` seconds pass (False)."""
    seen, deadline = b"", time.time() + timeout
    while time.time() < deadline:
        r, _, _ = select.select([stream], [], [], 0.5)
        if r:
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                return False
            seen += chunk
            if needle in seen:
                return True
    return False


def pty_throughput(t, key, mb):
    cmd = t.ssh(key, f"head -c {mb * 1000000} /dev/zero | base64", tty=True)
    out_bytes = (mb * 1000000 + 2) // 3 * 4
    out_bytes += out_bytes // 76  # base64's newlines, which the PTY turns into CRLF (same for both)
    return out_bytes / timed(cmd, stdin=subprocess.DEVNULL) / 1e6


def kernel_pty(mb):
    cmd = ["script", "-qc", f"head -c {mb * 1000000} /dev/zero | base64", "/dev/null"]
    out_bytes = (mb * 1000000 + 2) // 3 * 4
    out_bytes += out_bytes // 76
    return out_bytes / timed(cmd, stdin=subprocess.DEVNULL) / 1e6


def pty_then_ssh(t, key, mb):
    """The kernel's PTY (script) piped into an SSH channel that discards it: what the PTY costs
    plus what SSH transport costs on the same cores, without any server-side PTY handling."""
    inner = f"head -c {mb * 1000000} /dev/zero | base64"
    ssh = " ".join(shlex.quote(a) for a in t.ssh(key, "cat > /dev/null"))
    cmd = ["sh", "-c", f"script -qc {shlex.quote(inner)} /dev/null | {ssh}"]
    out_bytes = (mb * 1000000 + 2) // 3 * 4
    out_bytes += out_bytes // 76
    return out_bytes / timed(cmd, stdin=subprocess.DEVNULL) / 1e6


def channel_throughput(t, key, mb):
    pid = server_pids(t)[0]
    before = cpu_seconds(pid)
    dt = timed(t.ssh(key, f"head -c {mb * 1000000} /dev/zero"))
    time.sleep(0.3)  # let sshd reap the session process so its CPU time is counted
    cpu = cpu_seconds(pid) - before
    return mb / dt, cpu / (mb / 1000)


class EchoSession:
    """An ssh client in a PTY, with `cat` running in a PTY on the server: each keystroke comes
    back twice (the server's terminal echoes it, cat repeats it); the first copy is the echo."""

    def __init__(self, t, key):
        self.name = t.name
        self.typed = 0
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execvp("ssh", t.ssh(key, "cat", tty=True))
        # Wait until the remote side is ready: an initial round trip.
        buf, end = b"", time.time() + 15
        os.write(self.fd, b"R")
        while b"R" not in buf and time.time() < end:
            r, _, _ = select.select([self.fd], [], [], 0.5)
            if r:
                buf += os.read(self.fd, 4096)
        if b"R" not in buf:
            self.close()
            raise SystemExit(f"{t.name}: the echo session did not start")
        time.sleep(0.3)

    def keys(self, n):
        """Types n keys, one at a time; returns each one's latency in ms."""
        lat = []
        for _ in range(n):
            ch = bytes([97 + self.typed % 26])
            t0 = time.perf_counter()
            os.write(self.fd, ch)
            got = b""
            while ch not in got:
                r, _, _ = select.select([self.fd], [], [], 5)
                if not r:
                    raise SystemExit(f"{self.name}: no echo")
                got += os.read(self.fd, 4096)
            lat.append((time.perf_counter() - t0) * 1000)
            self.typed += 1
            if self.typed % 50 == 0:
                os.write(self.fd, b"\r")  # keep cat's line short
                time.sleep(0.01)
                try:
                    os.read(self.fd, 4096)
                except OSError:
                    pass
        return lat

    def close(self):
        os.kill(self.pid, signal.SIGTERM)
        os.waitpid(self.pid, 0)
        os.close(self.fd)


def measure_echo(g, s, key, q, record):
    """Both sessions stay open and take turns, a batch of keys at a time (A B A B), so each
    batch's hypervisor steal is measured and a batch that lost CPU time is typed again."""
    keys, batch = (40, 20) if q else (1000, 100)
    sessions = []
    try:
        for t in (g, s):
            sessions.append(EchoSession(t, key))
        echo = {x.name: [] for x in sessions}
        while any(len(echo[x.name]) < keys for x in sessions):
            for x in sessions:
                if len(echo[x.name]) < keys:
                    echo[x.name] += quiet("echo", lambda: x.keys(batch))
    finally:
        for x in sessions:
            x.close()
    record(f"keystroke echo ({keys} keys)", "ms",
           {k: {"median": pct(v, 0.5), "p95": pct(v, 0.95), "p99": pct(v, 0.99), "n": len(v)}
            for k, v in echo.items()}, "lower")


def is_server(pid):
    c = cmdline(pid)
    return c.startswith("sshd") or c.startswith(SSHD) or "hermes-ssh-gateway" in c.split(" ")[0]


def open_sessions(t, key, n, program):
    """n interactive sessions running `program` (bounded wait); returns the ssh clients and how
    many sessions the server runs, counted by their programs."""
    clients = []
    for _ in range(n):
        clients.append(subprocess.Popen(t.ssh(key, program, tty=True), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.002)
    deadline = time.time() + max(30, n / 10)
    accepted = 0
    while time.time() < deadline:
        accepted = sum(1 for p in tree_pids(server_pids(t)[0]) if cmdline(p).startswith(program))
        if accepted >= n or all(c.poll() is not None for c in clients):
            break
        time.sleep(0.5)
    return clients, accepted


def idle_sessions(t, key, n):
    pids = [p for p in tree_pids(server_pids(t)[0]) if is_server(p)]
    base_rss, base_pss = mem_kb(pids, "VmRSS"), mem_kb(pids, "Pss")
    clients, accepted = open_sessions(t, key, n, "sleep 600")
    time.sleep(1)
    # The server's own processes only (sshd's per-session processes count; the programs and
    # their shells do not, for either server).
    pids = [p for p in tree_pids(server_pids(t)[0]) if is_server(p)]
    rss_server = mem_kb(pids, "VmRSS") - base_rss
    pss = mem_kb(pids, "Pss") - base_pss
    for c in clients:
        c.terminate()
    for c in clients:
        try:
            c.wait(10)
        except subprocess.TimeoutExpired:
            c.kill()
    time.sleep(2)
    return accepted, rss_server / max(accepted, 1), pss / max(accepted, 1)


def detached_sessions(t, key, n):
    """Memory per detached session: n PTY sessions whose clients were killed (SIGKILL), the
    programs still running under the gateway with their terminal models."""
    pids = [p for p in tree_pids(server_pids(t)[0]) if is_server(p)]
    base_rss, base_pss = mem_kb(pids, "VmRSS"), mem_kb(pids, "Pss")
    clients, _ = open_sessions(t, key, n, "sleep 601")
    for c in clients:
        c.kill()
    for c in clients:
        c.wait()
    # The gateway gives freed heap back a few seconds after connections close: measure once
    # its memory has settled (no longer falling), within a bound.
    pids = [p for p in tree_pids(server_pids(t)[0]) if is_server(p)]
    last, settled_since, deadline = None, time.time(), time.time() + 20
    while time.time() < deadline:
        now = mem_kb(pids, "VmRSS")
        if last is None or now < last * 0.99:
            last, settled_since = now, time.time()
        elif time.time() - settled_since >= 6:
            break
        time.sleep(0.5)
    left = sum(1 for p in tree_pids(server_pids(t)[0]) if cmdline(p).startswith("sleep 601"))
    pids = [p for p in tree_pids(server_pids(t)[0]) if is_server(p)]
    rss = mem_kb(pids, "VmRSS") - base_rss
    pss = mem_kb(pids, "Pss") - base_pss
    return left, rss / max(left, 1), pss / max(left, 1)


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def device_flow(tmp, quick):
    """Approval → program running, with the test IdP (interval 1 s)."""
    idp_dir = os.path.join(ROOT, "tests", "idp")
    if not shutil.which("node"):
        return None
    if not os.path.exists(os.path.join(idp_dir, "node_modules", "oidc-provider")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=idp_dir, check=True)
    idp = subprocess.Popen(["node", "server.mjs"], cwd=idp_dir, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, env={**os.environ, "INTERVAL": "1"})
    procs.append(idp)
    issuer = None
    while issuer is None:
        line = idp.stdout.readline().decode()
        if not line:
            return None
        try:
            issuer = json.loads(line)["issuer"]
        except (ValueError, KeyError):
            pass
    d = os.path.join(tmp, "gw-device")
    os.makedirs(d)
    port = free_port()
    with open(os.path.join(d, "gateway.toml"), "w") as f:
        f.write(f'[ssh]\nlisten = "127.0.0.1:{port}"\n[session]\ncommand = ["/bin/echo", "PROGRAM-RUNNING"]\n'
                f'[oidc]\nissuer = "{issuer}"\nclient_id = "hermes-gateway"\nscopes = ["openid", "email"]\n'
                f'enroll_ttl = "0s"\n')
    gw = start([GATEWAY, "--config", os.path.join(d, "gateway.toml")])
    wait_port(port)
    time.sleep(1.5)  # discovery
    key = os.path.join(tmp, "devkey")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    import http.cookiejar
    import re
    import urllib.parse
    import urllib.request
    results = []
    for _ in range(2 if quick else 5):
        pid, fd = pty.fork()
        if pid == 0:
            os.execvp("ssh", ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o",
                              "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-i", key,
                              "-p", str(port), "127.0.0.1"])
        out = b""
        end = time.time() + 20
        m = None
        while time.time() < end and not m:
            r, _, _ = select.select([fd], [], [], 0.5)
            if r:
                out += os.read(fd, 65536)
            m = re.search(rb"(http://127\.0\.0\.1:\d+/device\?user_code=[A-Z]{4}-[A-Z]{4})", out)
        uri = m.group(1).decode()
        jar = http.cookiejar.CookieJar()
        op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        page = op.open(uri).read().decode()
        xsrf = re.search(r'name="xsrf" value="([^"]+)"', page).group(1)
        code = uri.split("user_code=")[1]
        r = op.open(f"{issuer}/device", urllib.parse.urlencode(
            {"xsrf": xsrf, "user_code": code, "confirm": "yes"}).encode())
        interaction = r.geturl()
        op.open(interaction + "/login", urllib.parse.urlencode({"login": "alice"}).encode()).read()
        approved = time.perf_counter()
        while b"PROGRAM-RUNNING" not in out:
            r, _, _ = select.select([fd], [], [], 5)
            if not r:
                break
            try:
                out += os.read(fd, 65536)
            except OSError:
                break
        results.append((time.perf_counter() - approved) * 1000)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(fd)
    gw.terminate()
    idp.terminate()
    return results


def main():
    global GATEWAY, ONLY, REPS, MAX_STEAL
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small N: checks the harness, not the numbers")
    ap.add_argument("--gateway", help="the gateway binary (default: target/release/hermes-ssh-gateway)")
    ap.add_argument("--reps", type=int, default=0,
                    help="repetitions of the throughput measures (default 3; 1 with --quick)")
    ap.add_argument("--max-steal", type=float, default=MAX_STEAL,
                    help="rerun a run during which the hypervisor stole more than this %% of the CPU time "
                         "(default %(default)s; 100 never reruns)")
    ap.add_argument("--only", action="append", default=[],
                    help="measure only these groups: connect, pty, channel, echo, idle, reattach, detached, device")
    args = ap.parse_args()
    ONLY = set(args.only)
    MAX_STEAL = args.max_steal
    REPS = args.reps
    if args.gateway:
        GATEWAY = args.gateway
    q = args.quick
    tmp = tempfile.mkdtemp(prefix="hermes-bench-")
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(), "quick": q,
               "metrics": {}}
    try:
        run(tmp, q, results)
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    out = os.environ.get("BENCH_OUT", os.path.join(ROOT, "bench", "results.json"))
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nresults written to {out}")


def machine():
    cpus = os.cpu_count()
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024 // 1024
    except OSError:
        mem = 0
    return f"{cpus} cores, {mem} GiB, {os.uname().release}"


def run(tmp, q, results):
    key = os.path.join(tmp, "id")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    pub = open(key + ".pub").read().strip()

    # The gateway: the key mapped to "bench"; exec words are run by /bin/sh. A second one without
    # the Landlock sandbox measures what the sandbox costs.
    def gateway(name, session_extra="", limits_extra=""):
        d = os.path.join(tmp, name)
        os.makedirs(os.path.join(d, "keys", "users"))
        with open(os.path.join(d, "keys", "users", "bench.keys"), "w") as f:
            f.write(pub + "\n")
        port = free_port()
        with open(os.path.join(d, "gateway.toml"), "w") as f:
            f.write(f'[ssh]\nlisten = "127.0.0.1:{port}"\n'
                    '[session]\ncommand = ["/bin/sh", "-c", "eval \\"$*\\"", "sh"]\nexec = "args"\n'
                    f'{session_extra}[limits]\nmax_connections = 5000\nmax_sessions_per_user = 0\n{limits_extra}'
                    '[logging]\nlevel = "warn"\n')
        return start([GATEWAY, "--config", os.path.join(d, "gateway.toml")]), port

    gw, gport = gateway("gw")
    gw_nosb, nport = gateway("gw-nosandbox", 'isolation = "none"\n')
    # And one whose sessions outlive their clients (a terminal model parses all output).
    gw_det, dport = gateway("gw-detach", 'detach_timeout = "30m"\n', "max_detached_per_user = 5000\n")

    # A private sshd: its own host key, publickey only, no PAM, the same program through /bin/sh.
    sdir = os.path.join(tmp, "sshd")
    os.makedirs(sdir)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(sdir, "host")], check=True)
    with open(os.path.join(sdir, "authorized_keys"), "w") as f:
        f.write(f'command="/bin/sh -c \\"$SSH_ORIGINAL_COMMAND\\"",environment="SHLVL=1" {pub}\n')
    os.chmod(os.path.join(sdir, "authorized_keys"), 0o600)
    sport = free_port()
    with open(os.path.join(sdir, "sshd_config"), "w") as f:
        f.write(f"Port {sport}\nListenAddress 127.0.0.1\nHostKey {sdir}/host\nPidFile {sdir}/sshd.pid\n"
                f"AuthorizedKeysFile {sdir}/authorized_keys\nUsePAM no\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin yes\n"
                "StrictModes no\nPermitUserEnvironment yes\nMaxStartups 2000:30:3000\nMaxSessions 10\n"
                "UseDNS no\nPrintMotd no\nPrintLastLog no\n")
    os.makedirs("/run/sshd", exist_ok=True)
    sshd = start([SSHD, "-D", "-f", os.path.join(sdir, "sshd_config")])
    wait_port(gport)
    wait_port(nport)
    wait_port(dport)
    wait_port(sport)

    g = Target("gateway", gport, lambda: [gw.pid])
    s = Target("sshd", sport, lambda: [sshd.pid])
    s25519 = Target("sshd-curve25519", sport, lambda: [sshd.pid], ["-o", "KexAlgorithms=curve25519-sha256"])
    g25519 = Target("gateway", gport, lambda: [gw.pid], ["-o", "KexAlgorithms=curve25519-sha256"])
    gnosb = Target("gateway, no sandbox", nport, lambda: [gw_nosb.pid], ["-o", "KexAlgorithms=curve25519-sha256"])
    gdet = Target("gateway, detach on", dport, lambda: [gw_det.pid])
    m = results["metrics"]

    def record(name, unit, values, better):
        m.setdefault(name, {"unit": unit, "better": better})
        for k, v in values.items():
            m[name][k] = v

    n = 8 if q else 50
    if want("connect"):
        measure_connect(g25519, gnosb, s, s25519, key, n, record)
    if want("pty"):
        measure_pty(g, gdet, s, key, q, record)
    if want("channel"):
        measure_channel(g, s, key, q, record)
    if want("echo"):
        measure_echo(g, s, key, q, record)
    if want("idle"):
        for count in ([10] if q else [100, 1000]):
            idle = {}
            for t in (g, s):
                accepted, rss, pss = idle_sessions(t, key, count)
                idle[t.name] = {"accepted": accepted, "rss_kb_per_session": round(rss, 1),
                                "pss_kb_per_session": round(pss, 1)}
            record(f"{count} idle PTY sessions", "KB/session", idle, "lower")
    if want("reattach"):
        lat = {"gateway, reattach": [], "gateway, connect": []}
        for _ in range(8 if q else 40):  # interleaved
            r = quiet("reattach", lambda: reattach_latency(gdet, key, 1))
            lat["gateway, reattach"] += r
            lat["gateway, connect"] += quiet("reattach", lambda: connect_latency(gdet, key, 1))
        record("reattach: connect + auth + screen restored", "ms",
               {k: summarize(v) for k, v in lat.items() if v}, "lower")
    if want("detached"):
        for count in ([10] if q else [1000]):
            left, rss, pss = detached_sessions(gdet, key, count)
            record(f"{count} detached PTY sessions (clients killed)", "KB/session",
                   {"gateway": {"accepted": left, "rss_kb_per_session": round(rss, 1),
                                "pss_kb_per_session": round(pss, 1)}}, "lower")
    if want("device"):
        dev = device_flow(tmp, q)
        if dev:
            record("device flow: approval → program running (interval 1 s)", "ms",
                   {"gateway": summarize(dev)}, "lower")
    results["steal"] = {
        "max_pct": MAX_STEAL,
        "reruns": sum(r[0] for r in RERUNS.values()),
        "rerun_seconds": round(sum(r[1] for r in RERUNS.values()), 1),
        "kept_runs": {k: {"median_pct": round(statistics.median(v), 1), "max_pct": round(max(v), 1), "n": len(v),
                          "reruns": RERUNS.get(k, [0])[0]}
                      for k, v in STEAL.items()},
    }
    print_table(results)


def measure_connect(g25519, gnosb, s, s25519, key, n, record):
    lat = {"gateway": [], "gateway, no sandbox": [], "sshd": [], "sshd-curve25519": []}
    for _ in range(n):  # interleaved
        g1, g2, s1, s2 = quiet("connect", lambda: (connect_latency(g25519, key, 1), connect_latency(gnosb, key, 1),
                                                   connect_latency(s, key, 1), connect_latency(s25519, key, 1)))
        lat["gateway"] += g1
        lat["gateway, no sandbox"] += g2
        lat["sshd"] += s1
        lat["sshd-curve25519"] += s2
    record("connect + auth + true", "ms", {k: summarize(v) for k, v in lat.items()}, "lower")


def measure_pty(g, gdet, s, key, q, record):
    mb = 20 if q else 200
    reps = REPS or (1 if q else 3)
    thr = {"gateway": [], "gateway, detach on": [], "sshd": [], "kernel PTY (script)": [],
           "script piped into sshd's ssh -T": []}
    for _ in range(reps):
        thr["gateway"].append(quiet("pty", lambda: pty_throughput(g, key, mb)))
        thr["gateway, detach on"].append(quiet("pty", lambda: pty_throughput(gdet, key, mb)))
        thr["sshd"].append(quiet("pty", lambda: pty_throughput(s, key, mb)))
        thr["kernel PTY (script)"].append(quiet("pty", lambda: kernel_pty(mb)))
        thr["script piped into sshd's ssh -T"].append(quiet("pty", lambda: pty_then_ssh(s, key, mb)))
    record(f"PTY throughput ({mb} MB base64)", "MB/s", {k: summarize(v) for k, v in thr.items()}, "higher")


def measure_channel(g, s, key, q, record):
    gb = 100 if q else 1000
    reps = REPS or (1 if q else 3)
    ch = {"gateway": [], "sshd": []}
    cpu = {"gateway": [], "sshd": []}
    for _ in range(reps):
        for t in (g, s):
            r, c = quiet("channel", lambda: channel_throughput(t, key, gb))
            ch[t.name].append(r)
            cpu[t.name].append(c)
    record(f"channel throughput, no PTY ({gb} MB)", "MB/s", {k: summarize(v) for k, v in ch.items()}, "higher")
    record("server CPU per GB", "s/GB", {k: summarize(v) for k, v in cpu.items()}, "lower")


def summarize(v):
    return {"median": round(statistics.median(v), 3), "p95": round(pct(v, 0.95), 3), "n": len(v)}


def print_table(results):
    print(f"\nhermes-ssh-gateway vs OpenSSH sshd — {results['date']} — {results['machine']}"
          + (" — QUICK (harness check only)" if results["quick"] else ""))
    print()
    print("| measure | gateway | sshd | gateway/sshd |")
    print("|---|---|---|---|")
    for name, d in results["metrics"].items():
        unit = d["unit"]
        gv, sv = d.get("gateway"), d.get("sshd")

        def fmt(x):
            if x is None:
                return "—"
            if "accepted" in x:
                return f"{x['rss_kb_per_session']} KB RSS, {x['pss_kb_per_session']} KB PSS, {x['accepted']} accepted"
            extra = f", p99 {x['p99']:.2f}" if "p99" in x else ""
            return f"{x['median']:.2f} (p95 {x['p95']:.2f}{extra}) {unit}"

        ratio = "—"
        if gv and sv:
            key = "rss_kb_per_session" if "accepted" in gv else "median"
            if sv[key]:
                ratio = f"{gv[key] / sv[key]:.2f}"
        print(f"| {name} | {fmt(gv)} | {fmt(sv)} | {ratio} |")
        for other in d:
            if other not in ("unit", "better", "gateway", "sshd"):
                print(f"| {name}: {other} | | {fmt(d[other])} | "
                      + (f"{gv['median'] / d[other]['median']:.2f}" if gv and 'median' in gv and d[other].get('median') else "—") + " |")
    st = results.get("steal")
    if st:
        kept = ", ".join(f"{k} median {v['median_pct']}% (max {v['max_pct']}%, {v['reruns']} reruns)"
                         for k, v in st["kept_runs"].items())
        print(f"\nCPU time stolen by the hypervisor during the kept runs: {kept or 'none measured'}. "
              f"Runs over {st['max_pct']}% were repeated, within a time budget per group: {st['reruns']} reruns, "
              f"{st['rerun_seconds']} s.")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
