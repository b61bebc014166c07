"""A simulated OpenAI + Anthropic provider: a real HTTP server for demos, tests and benchmarks."""

from apikeyrouter.sim.config import KeyBehavior, SimConfig, load_sim_config, parse_sim_config
from apikeyrouter.sim.provider import KeyStats, SimProvider
from apikeyrouter.sim.server import SimServer, serve_sim

__all__ = [
    "KeyBehavior",
    "KeyStats",
    "SimConfig",
    "SimProvider",
    "SimServer",
    "load_sim_config",
    "parse_sim_config",
    "serve_sim",
]
