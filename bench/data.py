#!/usr/bin/env python3
"""The data plane through the sidecar (issue 25): `POST /query` on an index's listener,
against nginx `proxy_pass` with a pasted API key, and against the fake's data plane called
directly; and the unary gRPC `VectorService/Query` over h2c, against nginx `grpc_pass`.

Run through bench/data, which builds the release binary and installs wrk, nginx and oha. As in
bench.py: the fake Pinecone, the proxy and nginx share CPU 1, wrk runs on CPU 0; compare rows
of one run. Per row: requests a second, latency percentiles, CPU time per request of the
process under test (the fake's excluded), its RSS under load, errors.
"""

import http.client
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as b  # noqa: E402

FAKE, PROXY, PROXY_OPS, INDEX, NGINX, NGINX_GRPC = 18080, 18484, 19484, 18485, 18081, 18082
DIMENSION = 8
QUERY = json.dumps({"vector": [0.1 * i for i in range(DIMENSION)], "topK": 5})


def call(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, json.dumps(body) if body is not None else None,
              {"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status >= 300:
        sys.exit(f"{method} {path}: {r.status} {data[:200]!r}")
    return json.loads(data) if data else None


def grpc_query_frame():
    """`VectorService/Query`'s request, framed: top_k (2) = 5, vector (7, packed floats)."""
    floats = struct.pack(f"<{DIMENSION}f", *[0.1 * i for i in range(DIMENSION)])
    message = bytes([0x10, 5, 0x3A, len(floats)]) + floats
    return b"\x00" + len(message).to_bytes(4, "big") + message


def measure_grpc(name, port, pids, headers, conns, work):
    """oha sending the unary gRPC Query over h2c (one stream at a time per connection)."""
    body = os.path.join(work, "query.grpc")
    with open(body, "wb") as f:
        f.write(grpc_query_frame())
    hdr = sum((["-H", f"{k}: {v}"] for k, v in {"content-type": "application/grpc", "te": "trailers", **headers}.items()), [])
    url = f"http://127.0.0.1:{port}/VectorService/Query"
    base = ["taskset", "-c", "0", b.OHA, "--no-tui", "--output-format", "json", "--http2", "-m", "POST", "-D", body,
            "-c", str(conns)] + hdr
    subprocess.run(base + ["-z", f"{b.WARMUP}s", url], check=True, stdout=subprocess.DEVNULL)
    ticks0 = b.cpu_ticks(pids)
    sampler = b.RssSampler(pids)
    sampler.start()
    out = json.loads(subprocess.run(base + ["-z", f"{b.DURATION}s", url], check=True, capture_output=True, text=True).stdout)
    ticks1 = b.cpu_ticks(pids)
    sampler.stop = True
    sampler.join()
    codes = out.get("statusCodeDistribution", {})
    total = sum(codes.values())
    pct = out["latencyPercentiles"]
    return {"name": f"{name} gRPC", "conns": conns, "rps": out["summary"]["requestsPerSec"], "p50": pct["p50"] * 1e6,
            "p99": pct["p99"] * 1e6, "p999": pct["p99.9"] * 1e6, "errors": total - codes.get("200", 0),
            "cpu_us": (ticks1 - ticks0) / b.CLK_TCK * 1e6 / max(total, 1), "rss": sampler.peak}


def measure(name, port, pids, headers, conns, work):
    """wrk POSTing the query for DURATION seconds (after a warm-up)."""
    lua = os.path.join(work, f"query-{conns}.lua")
    with open(lua, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = \'{QUERY}\'\nwrk.headers["Content-Type"] = "application/json"\n')
        f.write(b.WRK_LUA)
    hdr = sum((["-H", f"{k}: {v}"] for k, v in headers.items()), [])
    url = f"http://127.0.0.1:{port}/query"
    subprocess.run(["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{b.WARMUP}s", "-s", lua] + hdr + [url],
                   check=True, stdout=subprocess.DEVNULL)
    ticks0 = b.cpu_ticks(pids)
    sampler = b.RssSampler(pids)
    sampler.start()
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{b.DURATION}s", "-s", lua] + hdr + [url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    ticks1 = b.cpu_ticks(pids)
    sampler.stop = True
    sampler.join()
    reqs, dur_us, p50, p99, p999, errors = map(int, re.search(r"BENCH (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out).groups())
    return {"name": name, "conns": conns, "rps": reqs / (dur_us / 1e6), "p50": p50, "p99": p99, "p999": p999,
            "errors": errors, "cpu_us": (ticks1 - ticks0) / b.CLK_TCK * 1e6 / max(reqs, 1), "rss": sampler.peak}


def setup(work):
    """The fake, an index with 1,000 vectors, a data-plane key for nginx; then the proxy with a
    listener for the index, and nginx. Answers the targets: name, port, pids, headers."""
    b.spawn([b.BIN, "fake-pinecone", "--listen", f"127.0.0.1:{FAKE}", "--expires-in", "86400"], 1,
            stdout=subprocess.DEVNULL)
    b.wait_port(FAKE)
    token = call(FAKE, "POST", "/oauth/token", {
        "grant_type": "client_credentials", "client_id": "demo-client-id",
        "client_secret": "demo-client-secret", "audience": "https://api.pinecone.io/"})["access_token"]
    auth = {"Authorization": f"Bearer {token}", "X-Pinecone-Api-Version": b.VERSION}
    project = call(FAKE, "GET", "/admin/projects", headers=auth)["data"][0]["id"]
    key = call(FAKE, "POST", f"/admin/projects/{project}/api-keys",
               {"name": "bench", "roles": ["ProjectEditor"]}, auth)["value"]
    index = call(FAKE, "POST", "/indexes", {"name": "bench", "dimension": DIMENSION, "metric": "cosine",
                                            "spec": {"serverless": {"cloud": "aws", "region": "us-east-1"}}},
                 {"Api-Key": key})
    data = int(index["host"].rsplit(":", 1)[1])
    vectors = [{"id": f"v{i}", "values": [((i * 7 + j) % 10) / 10 for j in range(DIMENSION)]} for i in range(1000)]
    call(data, "POST", "/vectors/upsert", {"vectors": vectors}, {"Api-Key": key})

    env = dict(os.environ)
    env.update({
        "PINECONE_CLIENT_ID": "demo-client-id", "PINECONE_CLIENT_SECRET": "demo-client-secret",
        "PINECONE_PROXY_TOKEN_URL": f"http://127.0.0.1:{FAKE}/oauth/token",
        "PINECONE_PROXY_UPSTREAM_URL": f"http://127.0.0.1:{FAKE}", "PINECONE_API_VERSION": b.VERSION,
        "PINECONE_PROXY_API_KEY_PROJECT_ID": project, "PINECONE_PROXY_INDEXES": f"bench=127.0.0.1:{INDEX}",
    })
    log = open(os.path.join(work, "proxy.log"), "w")
    proxy = b.spawn([b.BIN, "--listen", f"127.0.0.1:{PROXY}", "--ops-listen", f"127.0.0.1:{PROXY_OPS}"], 1,
                    env=env, stdout=log, stderr=log)
    b.wait_port(PROXY_OPS)
    end = time.time() + 10
    while b.http_get(PROXY_OPS, "/readyz")[0] != 200:
        if time.time() > end:
            sys.exit("the proxy did not get ready (see its log)")
        time.sleep(0.01)

    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  upstream index {{ server 127.0.0.1:{data}; keepalive 64; }}
  upstream index_grpc {{ server 127.0.0.1:{data}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{NGINX_GRPC} http2;
    access_log off;
    location / {{
      grpc_pass grpc://index_grpc;
      grpc_set_header api-key "{key}";
      grpc_set_header x-pinecone-api-version "{b.VERSION}";
    }}
  }}
  server {{
    listen 127.0.0.1:{NGINX};
    access_log off;
    location / {{
      proxy_pass http://index;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Api-Key "{key}";
      proxy_set_header X-Pinecone-Api-Version "{b.VERSION}";
    }}
  }}
}}
""")
    nginx = b.spawn(["nginx", "-c", conf, "-p", work, "-g", "daemon off;"], 1)
    b.wait_port(NGINX)
    b.wait_port(NGINX_GRPC)
    nginx_pids = [nginx.pid] + [int(p) for p in subprocess.run(
        ["pgrep", "-P", str(nginx.pid)], capture_output=True, text=True).stdout.split()]
    fake_pid = b.procs[0].pid
    rest = [("direct", data, [fake_pid], {"Api-Key": key, "X-Pinecone-Api-Version": b.VERSION}),
            ("nginx", NGINX, nginx_pids, {}), ("proxy", INDEX, [proxy.pid], {"Api-Key": "unused"})]
    grpc = [("direct", data, [fake_pid], {"api-key": key}), ("nginx", NGINX_GRPC, nginx_pids, {}),
            ("proxy", INDEX, [proxy.pid], {"api-key": "unused"})]
    return rest, grpc


def main():
    work = tempfile.mkdtemp(prefix="pap-data-")
    try:
        rest, grpc = setup(work)
        runs = []
        for _ in range(b.ROUNDS):
            for conns in (16, 64):
                for name, port, pids, headers in rest:
                    runs.append(measure(name, port, pids, headers, conns, work))
                for name, port, pids, headers in grpc:
                    runs.append(measure_grpc(name, port, pids, headers, conns, work))
        rows = []
        names = [t[0] for t in rest] + [f"{t[0]} gRPC" for t in grpc]
        for name in names:
            for conns in (16, 64):
                mine = [r for r in runs if r["name"] == name and r["conns"] == conns]
                rows.append({k: (statistics_median([r[k] for r in mine]) if k not in ("name", "conns") else mine[0][k])
                             for k in mine[0]})
        by = {(r["name"], r["conns"]): r for r in rows}
        print(f"\npinecone-admin-proxy data-plane benchmark: POST /query ({DIMENSION} dimensions, 1,000 vectors, "
              f"topK 5); medians of {b.ROUNDS} rounds of {b.DURATION} s; fake, proxy and nginx on CPU 1, wrk on CPU 0\n")
        print("| target | conns | req/s | p50 µs | p99 µs | p99.9 µs | errors | CPU µs/req | RSS load KiB | req/s vs nginx |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            n = by[("nginx gRPC" if r["name"].endswith("gRPC") else "nginx", r["conns"])]
            print(f"| {r['name']} | {r['conns']} | {r['rps']:.0f} | {r['p50']:.0f} | {r['p99']:.0f} | {r['p999']:.0f} | "
                  f"{r['errors']:.0f} | {r['cpu_us']:.1f} | {r['rss']:.0f} | {r['rps'] / n['rps']:.2f} |")
        print()
        floors = [("no errors", all(r["errors"] == 0 for r in rows))]
        for kind in ("", " gRPC"):
            p, n = (lambda c, k=kind: by[(f"proxy{k}", c)]), (lambda c, k=kind: by[(f"nginx{k}", c)])
            floors += [
                (f"{kind.strip() or 'REST'} req/s ≥ 0.8 × nginx at 16 and 64 connections",
                 all(p(c)["rps"] >= 0.8 * n(c)["rps"] for c in (16, 64))),
                (f"{kind.strip() or 'REST'} CPU µs/req ≤ 1.4 × nginx at 16 and 64 connections",
                 all(p(c)["cpu_us"] <= 1.4 * n(c)["cpu_us"] for c in (16, 64))),
            ]
        for floor, ok in floors:
            print(f"{'met   ' if ok else 'MISSED'}  {floor}")
    finally:
        b.cleanup()


def statistics_median(values):
    import statistics
    return statistics.median(values)


if __name__ == "__main__":
    main()
