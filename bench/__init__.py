"""Benchmarks: h3-fastapi against raw Starlette, FastAPI, sse-starlette, httpx and h3 on Node.

Run everything with ``python -m bench`` (see ``bench/README.md``).
"""
