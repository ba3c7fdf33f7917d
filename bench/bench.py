#!/usr/bin/env python3
"""pinecone-admin-proxy against nginx and against the upstream called directly.

nginx runs as a careful user would configure it (an upstream keep-alive pool, `access_log
off`: row "nginx"), and again with its access log on (row "nginx+log"), since the proxy
writes an access line per request. Ratios are against the first. The proxy runs at its
defaults.

Run through bench/run, which builds the release binary and installs the tools. Pinning:
the upstream (`pinecone-admin-proxy fake-pinecone`), the proxy and nginx share CPU 1; the
load generators (wrk, oha) run on CPU 0. Every figure comes from this one run; timings
on a shared machine are noisy, so compare rows of one run, not runs.

Per row: requests a second, latency percentiles, CPU time per request of the process
under test (utime + stime from /proc, the upstream's excluded), its RSS idle and under
load, token requests (from the proxy's /metrics) and new upstream connections (TCP
active opens on the machine, less the load generator's own) during the measured window.

`BENCH_ALSO="label=path,…"` measures other builds of the proxy in the same rounds (rows
"proxy:label"), e.g. the previous commit's binary, so that two builds are compared within
one run rather than across runs.
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/pinecone-admin-proxy")
OHA = os.environ.get("OHA", "oha")
DURATION = int(os.environ.get("BENCH_SECONDS", "8"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
WARMUP = 2
UPSTREAM, PROXY, NGINX, NGINX_LOG, OPS, SINK = 18080, 18484, 18081, 18082, 19484, 18090
IDLE_SECONDS = 10
CLK_TCK = os.sysconf("SC_CLK_TCK")
VERSION = "2025-10"
WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""

procs = []


def spawn(args, cpu, **kw):
    p = subprocess.Popen(["taskset", "-c", str(cpu)] + args, **kw)
    procs.append(p)
    return p


def cleanup(*_):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    sys.exit(f"nothing listens on {port}")


def http_get(port, path, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def active_opens():
    with open("/proc/net/snmp") as f:
        lines = [l.split() for l in f if l.startswith("Tcp:")]
    return int(lines[1][lines[0].index("ActiveOpens")])


def upstream_conns(pid):
    """The connections `pid` holds open to the upstream."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", "dport", "=", f":{UPSTREAM}"],
                         capture_output=True, text=True, check=True).stdout
    return sum(1 for line in out.splitlines() if f"pid={pid}," in line)


def token_requests(ops=OPS):
    _, body = http_get(ops, "/metrics")
    return sum(float(l.split()[-1]) for l in body.decode().splitlines() if l.startswith("pinecone_proxy_token_requests_total{"))


class RssSampler(threading.Thread):
    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids, self.peak, self.stop = pids, 0, False

    def run(self):
        while not self.stop:
            try:
                self.peak = max(self.peak, rss_kib(self.pids))
            except OSError:
                pass
            time.sleep(0.05)


def measure(name, port, pids, headers, conns, lua, proxy=None):
    """`proxy`: the ops port of the proxy under test, None for the others."""
    url = f"http://127.0.0.1:{port}/admin/projects"
    hdr = sum((["-H", f"{k}: {v}"] for k, v in headers.items()), [])
    warm = ["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{WARMUP}s"] + hdr + [url]
    subprocess.run(warm, check=True, stdout=subprocess.DEVNULL)
    idle = rss_kib(pids)
    tokens0 = token_requests(proxy) if proxy else 0
    pool0 = upstream_conns(pids[0]) if proxy else 0
    opens0, ticks0 = active_opens(), cpu_ticks(pids)
    sampler = RssSampler(pids)
    sampler.start()
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{DURATION}s", "-s", lua] + hdr + [url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    ticks1, opens1 = cpu_ticks(pids), active_opens()
    sampler.stop = True
    sampler.join()
    tokens = token_requests(proxy) - tokens0 if proxy else None
    m = re.search(r"BENCH (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    reqs, dur_us, p50, p99, p999, errors = map(int, m.groups())
    # wrk opens its connections, and one more to check the target, inside the window;
    # every other active open on the machine is a new upstream connection.
    opened = opens1 - opens0 - conns - 1
    return {
        "name": name, "conns": conns, "rps": reqs / (dur_us / 1e6), "p50": p50, "p99": p99, "p999": p999,
        "errors": errors, "cpu_us": (ticks1 - ticks0) / CLK_TCK * 1e6 / max(reqs, 1),
        "rss_idle": idle, "rss_load": sampler.peak, "tokens": tokens,
        "new_upstream": opened,
        # The proxy's pool may grow to one connection per client connection: the warm-up
        # does not always reach the window's peak, and between two of the proxy's rounds
        # idle connections close (over the pool's cap of 32 after 10 s; the fake Pinecone's
        # 30 s keep-alive timeout). Opened beyond that is churn.
        "churn": max(0, opened - max(0, conns - pool0)) if proxy else None,
    }


def fixed_rate(name, port, pids, headers, rate=5000, conns=64):
    url = f"http://127.0.0.1:{port}/admin/projects"
    hdr = sum((["-H", f"{k}: {v}"] for k, v in headers.items()), [])
    ticks0 = cpu_ticks(pids)
    cmd = ["taskset", "-c", "0", OHA, "--no-tui", "--output-format", "json", "--latency-correction",
           "-q", str(rate), "-c", str(conns), "-z", f"{DURATION}s"] + hdr + [url]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    ticks1 = cpu_ticks(pids)
    pct = out["latencyPercentiles"]
    ok = out.get("statusCodeDistribution", {})
    total = sum(ok.values())
    return {
        "name": name, "conns": f"{rate}/s", "rps": out["summary"]["requestsPerSec"],
        "p50": pct["p50"] * 1e6, "p99": pct["p99"] * 1e6, "p999": pct["p99.9"] * 1e6,
        "errors": total - ok.get("200", 0), "cpu_us": (ticks1 - ticks0) / CLK_TCK * 1e6 / max(total, 1),
        "rss_idle": None, "rss_load": rss_kib(pids), "tokens": None, "new_upstream": None, "churn": None,
    }


def time_to_ready(env):
    """Milliseconds from spawning the proxy to /readyz answering 200, median of 5."""
    times = []
    for _ in range(5):
        start = time.perf_counter()
        p = subprocess.Popen([BIN, "--listen", "127.0.0.1:18485", "--ops-listen", "127.0.0.1:19485"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            try:
                if http_get(19485, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.0005)
        times.append((time.perf_counter() - start) * 1000)
        p.terminate()
        p.wait()
    return statistics.median(times)


def streaming(env):
    """Peak RSS of a fresh proxy while 100 MiB go up and 100 MiB come down through it."""
    sink = spawn([sys.executable, os.path.join(ROOT, "bench/sink.py"), str(SINK)], 1)
    wait_port(SINK)
    e = dict(env, PINECONE_PROXY_UPSTREAM_URL=f"http://127.0.0.1:{SINK}", RUST_LOG="warn")
    p = spawn([BIN, "--listen", "127.0.0.1:18486", "--ops-listen", "127.0.0.1:19486"], 1, env=e,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(18486)
    size = 100 << 20
    chunk = b"\0" * (1 << 20)
    c = http.client.HTTPConnection("127.0.0.1", 18486, timeout=60)
    c.putrequest("POST", "/upload")
    c.putheader("Content-Length", str(size))
    c.endheaders()
    for _ in range(100):
        c.send(chunk)
    r = c.getresponse()
    up = int(r.read())
    c.request("GET", f"/download/{size}")
    r = c.getresponse()
    down = 0
    while True:
        b = r.read(1 << 16)
        if not b:
            break
        down += len(b)
    c.close()
    with open(f"/proc/{p.pid}/status") as f:
        hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    p.terminate()
    p.wait()
    sink.terminate()
    return up, down, hwm


def median_row(runs):
    """Each timing the median of its own over the rounds (a round that was slow for one
    figure does not choose the others); token requests, new connections and errors summed
    over all rounds, so that none in any round goes unseen; RSS under load the highest seen."""
    row = dict(runs[0])
    for key in ("rps", "p50", "p99", "p999", "cpu_us", "rss_idle"):
        if row[key] is not None:
            row[key] = statistics.median(r[key] for r in runs)
    if row["tokens"] is not None:
        row["tokens"] = sum(r["tokens"] for r in runs)
    for key in ("new_upstream", "churn"):
        if row[key] is not None:
            row[key] = sum(r[key] for r in runs)
    row["rss_load"] = max(r["rss_load"] for r in runs)
    row["errors"] = sum(r["errors"] for r in runs)
    return row


def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def main():
    signal.signal(signal.SIGTERM, cleanup)
    env = dict(os.environ)
    env.update({
        "PINECONE_CLIENT_ID": "demo-client-id", "PINECONE_CLIENT_SECRET": "demo-client-secret",
        "PINECONE_PROXY_TOKEN_URL": f"http://127.0.0.1:{UPSTREAM}/oauth/token",
        "PINECONE_PROXY_UPSTREAM_URL": f"http://127.0.0.1:{UPSTREAM}", "PINECONE_API_VERSION": VERSION,
    })
    work = tempfile.mkdtemp(prefix="pap-bench-")
    try:
        spawn([BIN, "fake-pinecone", "--listen", f"127.0.0.1:{UPSTREAM}", "--expires-in", "86400"], 1,
              stdout=subprocess.DEVNULL)
        wait_port(UPSTREAM)
        c = http.client.HTTPConnection("127.0.0.1", UPSTREAM)
        c.request("POST", "/oauth/token", json.dumps({
            "grant_type": "client_credentials", "client_id": "demo-client-id",
            "client_secret": "demo-client-secret", "audience": "https://api.pinecone.io/"}),
            {"Content-Type": "application/json"})
        token = json.loads(c.getresponse().read())["access_token"]
        auth = {"Authorization": f"Bearer {token}", "X-Pinecone-Api-Version": VERSION}

        ready_ms = time_to_ready(env)

        log = open(os.path.join(work, "proxy.log"), "w")
        proxy = spawn([BIN, "--listen", f"127.0.0.1:{PROXY}", "--ops-listen", f"127.0.0.1:{OPS}"], 1,
                      env=env, stdout=log, stderr=log)
        wait_port(OPS)
        while http_get(OPS, "/readyz")[0] != 200:
            time.sleep(0.01)

        also = []
        for i, item in enumerate(filter(None, os.environ.get("BENCH_ALSO", "").split(","))):
            label, path = item.split("=", 1)
            port, ops = 18490 + i, 19490 + i
            p = spawn([path, "--listen", f"127.0.0.1:{port}", "--ops-listen", f"127.0.0.1:{ops}"], 1,
                      env=env, stdout=log, stderr=log)
            wait_port(ops)
            while http_get(ops, "/readyz")[0] != 200:
                time.sleep(0.01)
            also.append((f"proxy:{label}", port, [p.pid], {}, ops))

        # The same forwarding twice: without an access log (the reference) and with one.
        servers = "".join(f"""  server {{
    listen 127.0.0.1:{port};
    access_log {log};
    location / {{
      proxy_pass http://pinecone;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer {token}";
      proxy_set_header X-Pinecone-Api-Version "{VERSION}";
    }}
  }}
""" for port, log in ((NGINX, "off"), (NGINX_LOG, f"{work}/nginx-access.log")))
        conf = os.path.join(work, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  upstream pinecone {{ server 127.0.0.1:{UPSTREAM}; keepalive 64; }}
{servers}}}
""")
        nginx = spawn(["nginx", "-c", conf, "-p", work, "-g", "daemon off;"], 1)
        wait_port(NGINX)
        time.sleep(0.2)
        nginx_pids = [nginx.pid] + [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(nginx.pid)], capture_output=True, text=True).stdout.split()]
        lua = os.path.join(work, "report.lua")
        with open(lua, "w") as f:
            f.write(WRK_LUA)

        upstream_pid = procs[0].pid
        # Rounds interleave the three targets, so that a slow spell of a shared machine hits
        # all of them; each figure of a row is its median over the rounds.
        targets = (("direct", UPSTREAM, [upstream_pid], auth, None), ("nginx", NGINX, nginx_pids, {}, None),
                   ("nginx+log", NGINX_LOG, nginx_pids, {}, None), ("proxy", PROXY, [proxy.pid], {}, OPS), *also)
        rows = []
        for conns in (1, 16, 64):
            runs = {name: [] for name, *_ in targets}
            for _ in range(ROUNDS):
                for name, port, pids, headers, is_proxy in targets:
                    runs[name].append(measure(name, port, pids, headers, conns, lua, proxy=is_proxy))
            for name, *_ in targets:
                rows.append(median_row(runs[name]))
        runs = {name: [] for name, *_ in targets}
        for _ in range(ROUNDS):
            for name, port, pids, headers, _ in targets:
                runs[name].append(fixed_rate(name, port, pids, headers))
        for name, *_ in targets:
            rows.append(median_row(runs[name]))
        # Idle: after the load, the proxy holds its pooled connections and its token, and
        # should use no CPU at all (ticks are 1/CLK_TCK s).
        idle_ticks0 = cpu_ticks([proxy.pid])
        time.sleep(IDLE_SECONDS)
        idle_cpu_ms = (cpu_ticks([proxy.pid]) - idle_ticks0) / CLK_TCK * 1000
        idle_rss = rss_kib([proxy.pid])
        up, down, hwm = streaming(env)

        print(f"\npinecone-admin-proxy benchmark: GET /admin/projects; upstream, proxy and nginx on CPU 1, load "
              f"on CPU 0; each figure the median of {ROUNDS} interleaved rounds of {DURATION} s after {WARMUP} s "
              f"warm-up\n")
        print("| target | conns | req/s | p50 µs | p99 µs | p99.9 µs | errors | CPU µs/req | RSS idle KiB "
              "| RSS load KiB | token reqs | new upstream conns | of them beyond one per client conn | req/s vs nginx "
              "| req/s vs direct |")
        print("|" + " --- |" * 15)
        by = {(r["name"], str(r["conns"])): r for r in rows}
        for r in rows:
            n = by[("nginx", str(r["conns"]))]
            d = by[("direct", str(r["conns"]))]
            print(f"| {r['name']} | {r['conns']} | {r['rps']:.0f} | {r['p50']:.0f} | {r['p99']:.0f} | {r['p999']:.0f} "
                  f"| {r['errors']} | {r['cpu_us']:.1f} | {fmt(r['rss_idle'], 'd')} | {fmt(r['rss_load'], 'd')} "
                  f"| {fmt(r['tokens'], '.0f')} | {fmt(r['new_upstream'], 'd')} | {fmt(r['churn'], 'd')} | {r['rps'] / n['rps']:.2f} "
                  f"| {r['rps'] / d['rps']:.2f} |")
        size = os.path.getsize(BIN)
        print(f"\nidle after all the load: {idle_cpu_ms:.0f} ms of CPU in {IDLE_SECONDS} s, RSS {idle_rss} KiB "
              "(what 64 connections' worth of buffers left allocated)")
        print(f"binary (stripped release): {size / (1 << 20):.2f} MiB")
        print(f"ready (spawn to /readyz 200, local token endpoint, median of 5): {ready_ms:.1f} ms")
        print(f"streaming: {up / (1 << 20):.0f} MiB up and {down / (1 << 20):.0f} MiB down through a fresh "
              f"proxy; its peak RSS {hwm} KiB ({hwm / 1024:.1f} MiB)")

        p, n = (lambda c: by[("proxy", c)]), (lambda c: by[("nginx", c)])
        checks = [
            ("req/s ≥ 0.8 × nginx at 16 and 64 connections", all(p(c)["rps"] >= 0.8 * n(c)["rps"] for c in ("16", "64"))),
            ("CPU µs/req ≤ 1.4 × nginx at 16 and 64 connections", all(p(c)["cpu_us"] <= 1.4 * n(c)["cpu_us"] for c in ("16", "64"))),
            ("RSS under load ≤ 13 MiB", max(r["rss_load"] for r in rows if r["name"] == "proxy") <= 13 * 1024),
            ("idle RSS ≤ 8 MiB (idle before its windows at 1 connection)", p("1")["rss_idle"] <= 8 * 1024),
            ("no CPU while idle", idle_cpu_ms == 0),
            ("no token requests in the windows", all(r["tokens"] == 0 for r in rows if r["tokens"] is not None)),
            ("no new upstream connections in the windows beyond one per client connection",
             all(r["churn"] == 0 for r in rows if r["churn"] is not None)),
            ("no errors", all(r["errors"] == 0 for r in rows)),
            ("ready within 10 ms", ready_ms <= 10),
            ("streaming RSS ≤ 20 MiB", hwm <= 20 * 1024 and up == 100 << 20 and down == 100 << 20),
        ]
        print()
        for what, ok in checks:
            print(f"{'met ' if ok else 'MISSED'}  {what}")
    finally:
        cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
