"""The OpenAI-compatible HTTP proxy and management API (ASGI), served by hypercorn's trio worker."""

from apikeyrouter.observe.metrics import ProxyMetrics
from apikeyrouter.proxy.app import ProxyApp
from apikeyrouter.proxy.server import Listening, ProxyServer, hypercorn_config, is_loopback, serve_proxy

__all__ = ["Listening", "ProxyApp", "ProxyMetrics", "ProxyServer", "hypercorn_config", "is_loopback", "serve_proxy"]
