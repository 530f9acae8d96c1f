"""Chat completions through Sluice with the OpenAI Python client.

The client retries a 429 or 503 by itself, after the Retry-After the gateway sends
(up to 60 s); `max_retries` bounds how often. SLUICE_URL is the proxy, SLUICE_API_KEY
your consumer's key.
"""

import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("SLUICE_URL", "http://127.0.0.1:8080") + "/v1",
    api_key=os.environ["SLUICE_API_KEY"],
    max_retries=5,
)

for question in ["hello", "and again", "once more"]:
    reply = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": question}],
    )
    print(reply.choices[0].message.content)
