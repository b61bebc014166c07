"""The OpenAI-compatible HTTP proxy and management API, served by our own HTTP/1.1 server on trio."""

from apikeyrouter.observe.metrics import ProxyMetrics
from apikeyrouter.proxy.app import ProxyApp
from apikeyrouter.proxy.server import Listening, ProxyServer, ServerLimits, is_loopback, serve_proxy

__all__ = ["Listening", "ProxyApp", "ProxyMetrics", "ProxyServer", "ServerLimits", "is_loopback", "serve_proxy"]
