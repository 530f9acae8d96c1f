"""Chat completions through Sluice with httpx, backing off as the gateway asks.

A 429 (a rate limit) or 503 (no capacity, a full queue, the limit store away) is
retried after its Retry-After; any other error is raised. The warning header says a
soft limit is near, before any request is refused. SLUICE_URL is the proxy,
SLUICE_API_KEY your consumer's key.
"""

import os
import sys
import time

import httpx


def chat(client: httpx.Client, question: str, attempts: int = 5) -> str:
    payload = {"model": "demo", "messages": [{"role": "user", "content": question}]}
    for attempt in range(attempts):
        response = client.post("/v1/chat/completions", json=payload)
        warning = response.headers.get("x-sluice-ratelimit-warning")
        if warning:
            print(f"near a limit: {warning} (RateLimit: {response.headers.get('ratelimit')})", file=sys.stderr)
        if response.status_code not in (429, 503):
            response.raise_for_status()
            return response.json()["choices"][0]["message"]["content"]
        # The gateway's own refusals carry a JSON error with a reason code and a trace id.
        error = response.json()["error"] if response.headers.get("content-type") == "application/json" else {}
        wait = float(response.headers.get("retry-after", 2**attempt))
        print(f"{response.status_code} {error.get('code')}: retrying in {wait:g} s (trace {error.get('trace_id')})", file=sys.stderr)
        time.sleep(wait)
    raise RuntimeError(f"no answer after {attempts} attempts")


with httpx.Client(
    base_url=os.environ.get("SLUICE_URL", "http://127.0.0.1:8080"),
    headers={"Authorization": f"Bearer {os.environ['SLUICE_API_KEY']}"},
    timeout=60,
) as client:
    for question in ["hello", "and again", "once more"]:
        print(chat(client, question))
