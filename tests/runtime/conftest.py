"""Shared fixtures: a tiny random model directory and real servers (uvicorn on 127.0.0.1, in a thread)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import torch

from model_runtime.artifact import save_model_dir
from model_runtime.llama import LlamaConfig, LlamaForCausalLM, load_pretrained
from model_runtime.serving.api import create_app
from model_runtime.serving.config import ServeConfig
from model_runtime.serving.server import make_server
from model_runtime.tokenizer import byte_tokenizer

MODEL_NAME = "tiny"
TOKENIZER = byte_tokenizer()


def tiny_config(**overrides) -> LlamaConfig:
    values = dict(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512)
    return LlamaConfig(**{**values, **overrides})


def tiny_model(seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A random model whose logits are peaked enough that greedy choices are not near-ties."""
    model = LlamaForCausalLM(tiny_config(**overrides))
    model.init_weights(seed, std=0.2)
    return model.eval()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("models") / MODEL_NAME
    save_model_dir(tiny_model(), byte_tokenizer(), target)
    return target


@pytest.fixture(scope="module")
def reference_model(model_dir):
    return load_pretrained(model_dir, dtype=torch.float32)


def greedy_text(model, prompt: str, max_tokens: int) -> str:
    """The plain uncached greedy continuation, to compare the server's output with."""
    ids = TOKENIZER.encode(prompt).ids
    start = len(ids)
    with torch.inference_mode():
        for _ in range(max_tokens):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return TOKENIZER.decode(ids[start:])


def client(server, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.02, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


@dataclass
class RunningServer:
    url: str
    app: object
    server: object

    @property
    def state(self):
        return self.app.state.server

    @property
    def engine(self):
        return self.app.state.runtime.engine.engine

    def metric(self, name: str, labels: str = "") -> float:
        text = httpx.get(f"{self.url}/metrics").text
        for line in text.splitlines():
            if line.startswith(name + "{") and labels in line:
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)


@contextlib.contextmanager
def running_server(model_dir: Path, **overrides) -> Iterator[RunningServer]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    values = dict(model=model_dir, host="127.0.0.1", port=port, served_model_name=MODEL_NAME, num_kv_blocks=256,
                  max_num_seqs=16, max_num_batched_tokens=256, max_model_len=512)
    cfg = ServeConfig(**{**values, **overrides})
    app = create_app(cfg)
    server = make_server(app, cfg.host, cfg.port, cfg.drain_timeout)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 180, message="server start")  # loaded machines
        assert server.started, "the server failed to start"
        yield RunningServer(f"http://127.0.0.1:{port}", app, server)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[RunningServer]:
    with running_server(model_dir) as running:
        yield running


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The machine is shared and tiny models gain nothing from more threads; restored for other test folders."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
