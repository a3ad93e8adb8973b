"""The REST API (v1): FastAPI routers over core operations."""
