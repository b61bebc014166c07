"""The embedded router: `open_router` / `ApiKeyRouter`, composed of its parts.

open.py       open_router and the ApiKeyRouter facade (owns the tree's nursery)
tree.py       the supervision tree as data (ChildSpecs)
registry.py   providers, keys, operator commands, the actors' refs (the pipeline's `Deps`)
reload.py     apply_config: a SIGHUP reload
pipeline.py   the request path: route and stream share one attempt loop
acquire.py    decide, hold the budget, reserve the key; or wait; or say why not (typed refusals)
upstream.py   one upstream call in the caller's task, on a client leased from the provider actor
asks.py       bounded, shielded asks and tells for the request path
views.py      every JSON view and wall-clock rendering
api.py        RouterAPI: the surface the proxy and the debug channel use
"""

from apikeyrouter.runtime.open import ApiKeyRouter, open_router
from apikeyrouter.runtime.pipeline import RoutedStreamHandle

__all__ = ["ApiKeyRouter", "RoutedStreamHandle", "open_router"]
