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
FIXED_RATE = 1000
UPSERT_BYTES = 2 << 20
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


def oha(name, pids, args, url, warmup=True):
    """oha for DURATION seconds (after a warm-up): its JSON summary, and the CPU a request and
    the peak RSS of `pids`. Failed connections and streams (oha's errorDistribution, save
    the requests cut off when the time is up) count as errors, as do non-200 answers."""
    base = ["taskset", "-c", "0", b.OHA, "--no-tui", "--output-format", "json"] + args
    if warmup:
        subprocess.run(base + ["-z", f"{b.WARMUP}s", url], check=True, stdout=subprocess.DEVNULL)
    ticks0 = b.cpu_ticks(pids)
    sampler = b.RssSampler(pids)
    sampler.start()
    out = json.loads(subprocess.run(base + ["-z", f"{b.DURATION}s", url], check=True, capture_output=True, text=True).stdout)
    ticks1 = b.cpu_ticks(pids)
    sampler.stop = True
    sampler.join()
    codes = out.get("statusCodeDistribution", {})
    failed = sum(n for what, n in out.get("errorDistribution", {}).items()
                 if "deadline" not in what and "canceled" not in what)
    if failed:
        print(f"{name}: {out['errorDistribution']}", file=sys.stderr)
    total = sum(codes.values()) + failed
    pct = out["latencyPercentiles"]
    return {"rps": out["summary"]["requestsPerSec"], "p50": pct["p50"] * 1e6, "p99": pct["p99"] * 1e6,
            "p999": pct["p99.9"] * 1e6, "errors": total - codes.get("200", 0),
            "cpu_us": (ticks1 - ticks0) / b.CLK_TCK * 1e6 / max(total, 1), "rss": sampler.peak}


def headers_args(headers):
    return sum((["-H", f"{k}: {v}"] for k, v in headers.items()), [])


def grpc_args(headers, work):
    body = os.path.join(work, "query.grpc")
    with open(body, "wb") as f:
        f.write(grpc_query_frame())
    grpc = {"content-type": "application/grpc", "te": "trailers", **headers}
    return ["--http2", "-m", "POST", "-D", body] + headers_args(grpc)


def measure_grpc(name, port, pids, headers, conns, work):
    """oha sending the unary gRPC Query over h2c (one stream at a time per connection)."""
    url = f"http://127.0.0.1:{port}/VectorService/Query"
    row = oha(f"{name} gRPC at {conns} connections", pids, grpc_args(headers, work) + ["-c", str(conns)], url)
    return {"name": f"{name} gRPC", "conns": conns, **row}


def fixed_rate(name, port, pids, headers, grpc, work):
    """REST `/query` or gRPC `Query` at 1,000 requests a second over 16 connections, latency
    measured from when each request was due (oha --latency-correction)."""
    if grpc:
        url, args = f"http://127.0.0.1:{port}/VectorService/Query", grpc_args(headers, work)
    else:
        url = f"http://127.0.0.1:{port}/query"
        args = ["-m", "POST", "-d", QUERY, "-T", "application/json"] + headers_args(headers)
    args += ["-c", "16", "-q", str(FIXED_RATE), "--latency-correction"]
    row = oha(f"{name} at {FIXED_RATE}/s", pids, args, url)
    return {"name": name + (" gRPC" if grpc else ""), **row}


def upsert_body(work):
    """A `/vectors/upsert` body of about 2 MiB: the same ids each time, so that the fake's
    index does not grow, in the namespace `upserts`."""
    path = os.path.join(work, "upsert.json")
    n = 0
    parts = []
    size = 20
    while size < UPSERT_BYTES - 200:
        vector = json.dumps({"id": f"u{n}", "values": [((n * 7 + j) % 10) / 10 for j in range(DIMENSION)]})
        parts.append(vector)
        size += len(vector) + 1
        n += 1
    # In a namespace of their own: the queries' (the default) keeps its 1,000 vectors.
    with open(path, "w") as f:
        f.write('{"namespace": "upserts", "vectors": [' + ",".join(parts) + "]}")
    return path


def measure_upsert(name, port, pids, headers, body):
    """oha POSTing 2 MiB upserts over 16 connections: rate, latency, CPU and peak RSS."""
    args = ["-m", "POST", "-D", body, "-T", "application/json", "-c", "16"] + headers_args(headers)
    row = oha(f"{name} upserts", pids, args, f"http://127.0.0.1:{port}/vectors/upsert")
    return {"name": name, **row}


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
        # 64 h2c connections at 160 KiB each: the default 8 MiB admits 51 (README, Limits).
        "PINECONE_PROXY_LIMITS_HEAD_MEMORY": "16MiB",
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
    client_max_body_size 4m;
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


PARTS = os.environ.get("BENCH_PARTS", "load,rate,upsert").split(",")
RATE, UPSERTS = f"{FIXED_RATE}/s", "2MiB"


def one_round(rest, grpc, work, upsert):
    """Every row once: the load at 16 and 64 connections, the fixed rate, the upserts."""
    runs = []
    if "load" in PARTS:
        for conns in (16, 64):
            runs += [measure(n, port, pids, h, conns, work) for n, port, pids, h in rest]
            runs += [measure_grpc(n, port, pids, h, conns, work) for n, port, pids, h in grpc]
    if "rate" in PARTS:
        for targets, is_grpc in ((rest, False), (grpc, True)):
            runs += [{**fixed_rate(n, port, pids, h, is_grpc, work), "conns": RATE} for n, port, pids, h in targets]
    if "upsert" in PARTS:
        runs += [{**measure_upsert(n, port, pids, h, upsert), "conns": UPSERTS} for n, port, pids, h in rest]
    return runs


def medians(runs):
    rows = []
    for key in dict.fromkeys((r["name"], r["conns"]) for r in runs):
        mine = [r for r in runs if (r["name"], r["conns"]) == key]
        rows.append({k: (statistics_median([r[k] for r in mine]) if k not in ("name", "conns") else mine[0][k])
                     for k in mine[0]})
    return rows


def floors(by):
    """Issue 25's floors, each with whether this run met it; rows not run are not judged."""
    out = [("no errors", all(r["errors"] == 0 for r in by.values()))]
    for kind in ("", " gRPC"):
        label = kind.strip() or "REST"
        p, n = (lambda c, k=kind: by[(f"proxy{k}", c)]), (lambda c, k=kind: by[(f"nginx{k}", c)])
        if ("proxy" + kind, 16) in by:
            out += [(f"{label} req/s ≥ 0.8 × nginx at 16 and 64 connections",
                     all(p(c)["rps"] >= 0.8 * n(c)["rps"] for c in (16, 64))),
                    (f"{label} CPU µs/req ≤ 1.4 × nginx at 16 and 64 connections",
                     all(p(c)["cpu_us"] <= 1.4 * n(c)["cpu_us"] for c in (16, 64)))]
        if ("proxy" + kind, RATE) in by:
            added = by[("proxy" + kind, RATE)]["p99"] - by[("direct" + kind, RATE)]["p99"]
            out.append((f"{label} p99 added over direct at {FIXED_RATE} req/s ≤ 1 ms ({added:.0f} µs)", added <= 1000))
    if ("proxy", UPSERTS) in by:
        rss = by[("proxy", UPSERTS)]["rss"]
        out.append((f"2 MiB upserts at 16 connections: RSS ≤ 24 MiB ({rss / 1024:.1f} MiB)", rss <= 24 * 1024))
    return out


def main():
    work = tempfile.mkdtemp(prefix="pap-data-")
    try:
        rest, grpc = setup(work)
        upsert = upsert_body(work)
        runs = []
        for _ in range(b.ROUNDS):
            runs += one_round(rest, grpc, work, upsert)
        rows = medians(runs)
        by = {(r["name"], r["conns"]): r for r in rows}
        print(f"\npinecone-admin-proxy data-plane benchmark: POST /query and gRPC Query ({DIMENSION} dimensions, "
              f"1,000 vectors, topK 5) at 16 and 64 connections and at {RATE} over 16; {UPSERTS} upserts over 16 "
              f"connections; medians of {b.ROUNDS} rounds of {b.DURATION} s; fake, proxy and nginx on CPU 1, "
              "the load on CPU 0\n")
        print("| target | conns | req/s | p50 µs | p99 µs | p99.9 µs | errors | CPU µs/req | RSS load KiB | req/s vs nginx |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            n = by[("nginx gRPC" if r["name"].endswith("gRPC") else "nginx", r["conns"])]
            print(f"| {r['name']} | {r['conns']} | {r['rps']:.0f} | {r['p50']:.0f} | {r['p99']:.0f} | {r['p999']:.0f} | "
                  f"{r['errors']:.0f} | {r['cpu_us']:.1f} | {r['rss']:.0f} | {r['rps'] / n['rps']:.2f} |")
        print()
        for floor, ok in floors(by):
            print(f"{'met   ' if ok else 'MISSED'}  {floor}")
    finally:
        b.cleanup()


def statistics_median(values):
    import statistics
    return statistics.median(values)


if __name__ == "__main__":
    main()
