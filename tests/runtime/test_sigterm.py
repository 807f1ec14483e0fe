"""SIGTERM under load against the real `modelfleet serve` process: no request in flight is dropped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys

import httpx

from conftest import wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_drains_in_flight_requests_and_exits_zero(model_dir, tmp_path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MODELFLEET_PORT": str(port), "MODELFLEET_NUM_KV_BLOCKS": "512", "OMP_NUM_THREADS": "1",
           "MODELFLEET_DRAIN_TIMEOUT": "60"}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "modelfleet.cli", "serve", "--model", str(model_dir),
                             "--host", "127.0.0.1", "--served-model-name", "tiny", "--max-num-seqs", "8"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                return httpx.get(f"{url}/ready").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 120, 0.1, "the server to become ready")

        async def main():
            started = asyncio.Event()
            first_chunks = 0

            async def stream(http: httpx.AsyncClient) -> tuple[int, str | None, bool]:
                nonlocal first_chunks
                body = {"prompt": "drain", "max_tokens": 480, "ignore_eos": True, "stream": True}
                tokens, finish, done = 0, None, False
                async with http.stream("POST", "/v1/completions", json=body) as response:
                    assert response.status_code == 200
                    async for line in response.aiter_lines():
                        if line == "data: [DONE]":
                            done = True
                        elif line.startswith("data: "):
                            choice = json.loads(line[6:])["choices"][0]
                            tokens += 1
                            finish = choice["finish_reason"] or finish
                            if tokens == 1:
                                first_chunks += 1
                                if first_chunks == 12:
                                    started.set()
                return tokens, finish, done

            async with httpx.AsyncClient(base_url=url, timeout=120) as http:
                tasks = [asyncio.create_task(stream(http)) for _ in range(12)]
                await asyncio.wait_for(started.wait(), 60)
                proc.send_signal(signal.SIGTERM)
                async with httpx.AsyncClient(base_url=url, timeout=10) as probe:
                    for _ in range(200):
                        if (await probe.get("/ready")).status_code == 503:
                            break
                        await asyncio.sleep(0.01)
                    else:
                        raise AssertionError("/ready did not turn 503 after SIGTERM")
                    refused = await probe.post("/v1/completions", json={"prompt": "late", "max_tokens": 2})
                    assert refused.status_code == 503 and refused.json()["error"]["message"]
                    assert not all(t.done() for t in tasks), "the load finished before the checks; make it longer"
                return await asyncio.gather(*tasks)

        results = asyncio.run(main())
        assert all(finish == "length" and done for _, finish, done in results), results
        assert proc.wait(timeout=60) == 0
        assert "draining" in (tmp_path / "server.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
