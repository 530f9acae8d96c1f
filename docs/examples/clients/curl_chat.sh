#!/usr/bin/env bash
# Chat completions through Sluice with curl. --retry retries a 429 or 503 (and a 408,
# 500, 502 or 504) after the Retry-After the gateway sends; --fail makes a request
# that still fails end the script (use --fail-with-body to see the JSON error, which
# curl then also prints for each retried attempt). SLUICE_URL is the proxy,
# SLUICE_API_KEY your consumer's key.
set -euo pipefail
for question in hello "and again" "once more"; do
  curl --silent --show-error --fail --retry 5 \
    "${SLUICE_URL:-http://127.0.0.1:8080}/v1/chat/completions" \
    -H "Authorization: Bearer $SLUICE_API_KEY" -H 'content-type: application/json' \
    -d "{\"model\": \"demo\", \"messages\": [{\"role\": \"user\", \"content\": \"$question\"}]}"
  echo
done
