"""Streamed questions over TLS: openai's default client against kb's pooled, draining one.

    python -m bench.pool_bench [--questions 20]

Serves the loopback Databricks stub over HTTPS (a throw-away self-signed certificate made with
``openssl``), streams the same answer N times with each client and prints connections opened and
time per question, measured in one run. Loopback hides network latency: against a real workspace
each avoided handshake also saves one or two round trips to it.
"""

from __future__ import annotations

import argparse
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import openai

from agent.databricks.httpx_compat import httpx_module
from agent.databricks.transport import _transport_class
from tests.databricks_stub import DatabricksStub


def _certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def _run(client: openai.OpenAI, questions: int) -> float:
    started = time.perf_counter()
    for _ in range(questions):
        stream = client.chat.completions.create(model="test-chat", messages=[{"role": "user", "content": "hi"}],
                                                stream=True)
        "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    return (time.perf_counter() - started) / questions * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cert, key = _certificate(Path(folder))
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert, key)
        client_ctx = ssl.create_default_context(cafile=str(cert))
        httpx = httpx_module()
        with DatabricksStub(token="dapi-bench", ssl_context=server_ctx) as stub:
            results = {}
            for name, transport in (("openai default", httpx.HTTPTransport(verify=client_ctx)),
                                    ("kb pooled", _transport_class(httpx)(verify=client_ctx))):
                client = openai.OpenAI(base_url=stub.base_url, api_key="dapi-bench", max_retries=0,
                                       http_client=openai.DefaultHttpxClient(transport=transport))
                stub.connections_opened = 0
                _run(client, 2)  # warm-up (imports, first handshake): counted in connections, not in time
                per_question = _run(client, args.questions)
                results[name] = (stub.connections_opened, per_question)
                print(f"{name:15} {args.questions + 2} streamed questions: {stub.connections_opened:3d} TLS connections, "
                      f"{per_question:.1f} ms per question")
        (base_conns, base_ms), (kb_conns, kb_ms) = results["openai default"], results["kb pooled"]
        print(f"ratio kb/default: connections {kb_conns / max(1, base_conns):.2f}, time per question {kb_ms / base_ms:.2f}"
              f" (saves {base_ms - kb_ms:.1f} ms per question on loopback)")


if __name__ == "__main__":
    main()
