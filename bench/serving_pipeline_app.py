"""Baseline (a) of the serving benchmark: the tutorial approach, FastAPI calling a transformers
text-generation pipeline once per request (a sync endpoint, so requests run on the thread pool)."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, pipeline


class GenerateRequest(BaseModel):
    text: str
    max_new_tokens: int = 64


def create_app(model_dir: Path) -> FastAPI:
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    app = FastAPI()

    @app.post("/generate")
    def generate(request: GenerateRequest) -> dict[str, str]:
        out = generator(request.text, max_new_tokens=request.max_new_tokens, min_new_tokens=request.max_new_tokens,
                        do_sample=False, return_full_text=False)
        return {"generated_text": out[0]["generated_text"]}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(create_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")
