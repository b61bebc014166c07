"""The package's layers point down, and nothing imports in a circle.

Every module of `src/apikeyrouter` belongs to one layer; an import may point at its own layer or any layer
below, never above. Every import counts: module level, inside functions, and under `TYPE_CHECKING` (a type
that needs a higher layer is a type in the wrong place). The order, lowest first:

    domain      pure rules and the value types every layer shares; errors and secret sit here too (an error
                carries domain values such as a FailureClass; the domain raises errors)
    kernel      Actor, ActorRef, Reply, child specs; observe (typed events, logs, metrics); config
    messages    the actors' protocols (frozen attrs, may carry a Reply)
    actors      actors/, supervisors/, store/
    adapters    provider wire formats over httpx
    runtime     open_router, the request pipeline, registration, views
    services    proxy/, debug/, sim/, aio (the router from asyncio)
    cli         cli, the standalone process, the demo, the package's public face

Two layers are stricter than "below": `domain` imports nothing above itself (it does no I/O and needs no actor),
and `messages` imports only the domain and the kernel proper (`kernel/`: a message may carry a reply handle).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "apikeyrouter"

# Longest prefix wins. Order of this list is the layer order.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("domain", ("apikeyrouter.domain", "apikeyrouter.errors", "apikeyrouter.secret")),
    ("kernel", ("apikeyrouter.kernel", "apikeyrouter.observe", "apikeyrouter.config")),
    ("messages", ("apikeyrouter.messages",)),
    ("actors", ("apikeyrouter.actors", "apikeyrouter.supervisors", "apikeyrouter.store")),
    ("adapters", ("apikeyrouter.adapters",)),
    ("runtime", ("apikeyrouter.runtime",)),
    ("services", ("apikeyrouter.proxy", "apikeyrouter.debug", "apikeyrouter.sim", "apikeyrouter.aio")),
    (
        "cli",
        (
            "apikeyrouter.cli",
            "apikeyrouter.ops_commands",
            "apikeyrouter.policy_commands",
            "apikeyrouter.admin_client",
            "apikeyrouter.standalone",
            "apikeyrouter.demo",
            "apikeyrouter.__main__",
        ),
    ),
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}
# Stricter than "below": what these layers may import at all.
ONLY = {
    "domain": {"domain"},
    "messages": {"domain", "kernel-core", "messages"},
}
KERNEL_CORE = "apikeyrouter.kernel"


def module_names() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(parts)] = path
    return mods


def layer_of(module: str) -> str:
    if module == "apikeyrouter":
        return "cli"  # the package's public face re-exports from every layer
    best: tuple[int, str] | None = None
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), name)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: place it in one (and in tests/test_layers.py)")
    return best[1]


def imports_of(module: str, path: Path, mods: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join([*base, *([node.module] if node.module else [])])
            else:
                stem = node.module or ""
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in mods else stem for alias in node.names]
        for target in targets:
            while target and target not in mods:
                target = target.rpartition(".")[0]
            # `from apikeyrouter.x import y` runs x/__init__ first: an edge into one's own package is no edge.
            if target and target != module and not module.startswith(target + "."):
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = module_names()
    return {m: imports_of(m, p, mods) for m, p in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(edges[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_every_module_belongs_to_a_layer() -> None:
    for module in module_names():
        layer_of(module)


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_imports_point_down_the_layers() -> None:
    upward = []
    for module, targets in graph().items():
        mine = layer_of(module)
        for target in sorted(targets):
            theirs = layer_of(target)
            if RANK[theirs] > RANK[mine]:
                upward.append(f"{module} ({mine}) -> {target} ({theirs})")
    assert upward == []


def test_domain_is_pure_and_messages_need_only_domain_and_kernel() -> None:
    strays = []
    for module, targets in graph().items():
        mine = layer_of(module)
        if mine not in ONLY:
            continue
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs == "kernel" and (target == KERNEL_CORE or target.startswith(KERNEL_CORE + ".")):
                theirs = "kernel-core"
            if theirs not in ONLY[mine]:
                strays.append(f"{module} -> {target}")
    assert strays == []


def test_no_module_is_too_long_to_read() -> None:
    long = {str(p.relative_to(SRC)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 650}
    assert long == {}


def test_the_checker_sees_a_cycle_and_an_upward_import() -> None:
    # The checks above can fail: a planted cycle and a planted upward edge are found.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert RANK[layer_of("apikeyrouter.domain.quota")] < RANK[layer_of("apikeyrouter.adapters.base")]
