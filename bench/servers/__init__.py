"""The Python servers under test, one module per workload family (run by uvicorn)."""
