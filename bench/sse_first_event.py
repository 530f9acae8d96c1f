#!/usr/bin/env python3
"""Times streamed chat completions: response headers, first server-sent event, end.

    sse_first_event.py URL COUNT LABEL  ->  one TSV line per request on stdout:
    LABEL  i  headers_s  first_event_s  total_s  events  status

A proxy that buffered the response would deliver the first event only when the whole
stream has ended (first_event ~ total); a streaming one delivers it as soon as the
agent sends it. Standard library only; every request is bounded by a 10 s timeout.
"""
import http.client
import json
import sys
import time
from urllib.parse import urlsplit

BODY = json.dumps({
    "model": "bench",
    "stream": True,
    "messages": [{"role": "user", "content": "one two three four five six seven eight"}],
})


def one(url):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    start = time.perf_counter()
    conn.request("POST", parts.path, body=BODY, headers={"content-type": "application/json"})
    resp = conn.getresponse()
    headers = time.perf_counter() - start
    first = None
    events = 0
    buffered = b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        if first is None:
            first = time.perf_counter() - start
        buffered += chunk
        events = buffered.count(b"\n\ndata: ") + buffered.startswith(b"data: ")
    total = time.perf_counter() - start
    conn.close()
    return headers, first if first is not None else total, total, events, resp.status


def main():
    url, count, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    for i in range(1, count + 1):
        h, f, t, n, status = one(url)
        print(f"{label}\t{i}\t{h:.6f}\t{f:.6f}\t{t:.6f}\t{n}\t{status}", flush=True)


if __name__ == "__main__":
    main()
