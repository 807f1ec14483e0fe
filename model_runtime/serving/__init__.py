"""The inference runtime: a continuous-batching engine over a paged KV cache behind an OpenAI-compatible API.

Layers, bottom up: ``block_manager`` (paged KV blocks, prefix cache) -> ``scheduler`` (which tokens run
each step) -> ``model_runner`` (one forward over all of them) -> ``sampling`` -> ``engine`` (one loop that
owns the model) -> ``api`` (FastAPI) -> ``server``/``cli`` (uvicorn, signals, flags).
"""
