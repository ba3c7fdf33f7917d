"""bench/fleet: see that script. Every process is real: one fake Pinecone (fake-pinecone with a
per_day quota), one redis-server, FLEET_SIZE proxies, each on its own ports."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

BIN = "target/release/pinecone-admin-proxy"
SIZE = int(os.environ.get("FLEET_SIZE", "50"))
LIFETIME = int(os.environ.get("FLEET_TOKEN_LIFETIME", "60"))
QUOTA = 5000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def wait_http(url, within=20):
    end = time.time() + within
    while time.time() < end:
        try:
            return get(url)
        except Exception:
            time.sleep(0.05)
    sys.exit(f"no answer from {url} within {within}s")


LOGS = "target/fleet-logs"


class Proxy:
    count = 0

    def __init__(self, fake, redis_url):
        Proxy.count += 1
        self.log = f"{LOGS}/proxy-{Proxy.count}.log"
        self.env = dict(
            os.environ,
            PINECONE_CLIENT_ID="demo-client-id",
            PINECONE_CLIENT_SECRET="demo-client-secret",
            PINECONE_PROXY_TOKEN_URL=f"{fake}/oauth/token",
            PINECONE_PROXY_UPSTREAM_URL=fake,
            PINECONE_PROXY_LISTEN=f"127.0.0.1:{free_port()}",
            PINECONE_PROXY_OPS_LISTEN=f"127.0.0.1:{free_port()}",
            PINECONE_PROXY_SHUTDOWN_DELAY="0s",
            PINECONE_PROXY_LOG_LEVEL="warn",
        )
        if redis_url:
            self.env["PINECONE_PROXY_TOKEN_SHARED_CACHE"] = redis_url
        self.ops = self.env["PINECONE_PROXY_OPS_LISTEN"]
        self.proc = None

    def start(self):
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([BIN], env=self.env, stdout=log, stderr=log)

    def wait_ready(self):
        r = subprocess.run([BIN, "wait", "--ops", self.ops, "--timeout", "30s"], stdout=subprocess.DEVNULL)
        if r.returncode != 0:
            sys.exit(f"a proxy was not ready within 30 s; its log, {self.log}:\n" + open(self.log).read()[-3000:])

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def fingerprint(self):
        return get(f"http://{self.ops}/status")["token"]["fingerprint"]


def run(with_cache):
    fake_port = free_port()
    fake = f"http://127.0.0.1:{fake_port}"
    procs = [
        subprocess.Popen(
            [BIN, "fake-pinecone", "--listen", f"127.0.0.1:{fake_port}", "--expires-in", str(LIFETIME),
             "--quota", f"per_day={QUOTA}"],
            stdout=subprocess.DEVNULL,
        )
    ]
    redis_url = None
    if with_cache:
        port = free_port()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        ))
        redis_url = f"redis://127.0.0.1:{port}/0"
    wait_http(f"{fake}/_fake/stats")
    issued = lambda: get(f"{fake}/_fake/stats")["tokens_issued"]
    fleet = [Proxy(fake, redis_url) for _ in range(SIZE)]
    phases = []
    try:
        # Cold start: all at once.
        before, t0 = issued(), time.time()
        for p in fleet:
            p.start()
        for p in fleet:
            p.wait_ready()
        phases.append(("cold start, all at once", issued() - before, time.time() - t0))
        # Rolling restart: one after another, each ready before the next stops.
        before, t0 = issued(), time.time()
        for p in fleet:
            p.stop()
            p.start()
            p.wait_ready()
        phases.append(("rolling restart of all", issued() - before, time.time() - t0))
        # The refresh: until every proxy holds a token other than the one it had.
        before, t0 = issued(), time.time()
        had = [p.fingerprint() for p in fleet]
        pending = set(range(SIZE))
        while pending and time.time() - t0 < LIFETIME * 2:
            pending = {i for i in pending if fleet[i].fingerprint() == had[i]}
            time.sleep(0.25)
        if pending:
            sys.exit(f"{len(pending)} proxies never refreshed")
        phases.append(("refresh of the shared token" if with_cache else "refresh", issued() - before, time.time() - t0))
        left = QUOTA - issued()
    finally:
        for p in fleet:
            if p.proc and p.proc.poll() is None:
                p.proc.kill()
        for p in procs:
            p.kill()
    return phases, left


def main():
    os.makedirs(LOGS, exist_ok=True)
    for f in os.listdir(LOGS):
        os.remove(os.path.join(LOGS, f))
    print(f"{SIZE} proxies, one fake Pinecone (tokens of {LIFETIME}s, quota per_day={QUOTA}), "
          f"one redis-server; {os.cpu_count()} CPUs\n")
    results = {c: run(c) for c in (True, False)}
    print(f"| phase | token requests with token.shared_cache | without |")
    print(f"| --- | ---: | ---: |")
    for (name, n_with, s_with), (_, n_without, s_without) in zip(results[True][0], results[False][0]):
        print(f"| {name} | {n_with} ({s_with:.1f} s) | {n_without} ({s_without:.1f} s) |")
    print(f"| per_day quota left of {QUOTA} | {results[True][1]} | {results[False][1]} |")


if __name__ == "__main__":
    main()
