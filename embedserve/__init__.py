"""embedserve: a self-hosted embedding inference server with dynamic batching and backpressure."""

__version__ = "0.1.0"
