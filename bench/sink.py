#!/usr/bin/env python3
"""A plain upstream for the streaming measurement: POST /upload reads and discards the
body and answers its length; GET /download/N sends N zero bytes. Python's standard
library only."""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = b"\0" * (1 << 16)


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        remaining = int(self.headers.get("Content-Length", "0"))
        total = 0
        while remaining:
            data = self.rfile.read(min(remaining, 1 << 16))
            if not data:
                break
            total += len(data)
            remaining -= len(data)
        body = str(total).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        size = int(self.path.rsplit("/", 1)[-1])
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        while size:
            n = min(size, len(CHUNK))
            self.wfile.write(CHUNK[:n])
            size -= n


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
