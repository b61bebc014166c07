"""What the simulated providers say: deterministic answers and the providers' own body shapes.

The answer text is a function of the request only (a hash of model and messages picks its words and
length), so two runs of a test or benchmark see the same bytes. Every word is a single token in both
cl100k_base and o200k_base and is preceded by a space, so the reported `completion_tokens` equals what
the real tokenizer counts for the text (asserted by the tests).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from apikeyrouter.adapters.tokens import count_chat, get_encoding
from apikeyrouter.domain.request import ChatMessage

__all__ = [
    "Answer",
    "ToolUse",
    "answer_for",
    "dumps",
    "messages_from_anthropic",
    "messages_from_openai",
    "tool_use_for",
    "words",
]

_CANDIDATES = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "at",
    "this",
    "are",
    "from",
    "or",
    "an",
    "which",
    "but",
    "not",
    "have",
    "one",
    "all",
    "we",
    "can",
    "new",
    "more",
    "time",
    "will",
    "about",
    "like",
    "data",
    "key",
    "route",
    "quota",
    "model",
    "token",
    "stream",
    "window",
    "limit",
    "answer",
    "fast",
    "simple",
    "system",
    "request",
    "value",
    "first",
    "last",
    "good",
    "great",
    "small",
    "large",
    "light",
    "right",
    "left",
    "over",
    "under",
    "after",
    "before",
    "again",
    "then",
    "there",
    "here",
    "when",
    "where",
    "what",
    "who",
    "how",
    "why",
    "yes",
    "no",
]

_lock = threading.Lock()
_words: tuple[str, ...] | None = None
_FIRST = "Sim"


def words() -> tuple[str, ...]:
    """The vocabulary, filtered once against both encodings (so the token claim is checked, not assumed)."""
    global _words
    if _words is None:
        with _lock:
            if _words is None:
                encs = [get_encoding("cl100k_base"), get_encoding("o200k_base")]
                for enc in encs:
                    if len(enc.encode_ordinary(_FIRST)) != 1:
                        raise RuntimeError(f"{_FIRST!r} is not one token in {enc.name}")
                _words = tuple(
                    w for w in (" " + c for c in _CANDIDATES) if all(len(e.encode_ordinary(w)) == 1 for e in encs)
                )
    return _words


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@attrs.frozen
class Answer:
    pieces: tuple[str, ...]  # one token each
    prompt_tokens: int
    finish: str  # "stop" | "length"
    digest: str

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)


def answer_for(model: str, messages: Sequence[ChatMessage], max_tokens: int | None) -> Answer:
    material = json.dumps([model, [(m.role, m.content) for m in messages]]).encode()
    digest = hashlib.blake2b(material, digest_size=16).digest()
    vocab = words()
    natural = 6 + digest[0] % 27  # 6..32 tokens
    n = natural if max_tokens is None else max(1, min(natural, max_tokens))
    pieces = [_FIRST] + [vocab[digest[(i % 15) + 1] * (i + 1) % len(vocab)] for i in range(1, n)]
    prompt = count_chat(messages, model).tokens
    return Answer(tuple(pieces), prompt, "length" if n < natural else "stop", digest.hex()[:24])


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for p in content:
            if isinstance(p, Mapping) and isinstance(p.get("text"), str):
                texts.append(p["text"])
            elif isinstance(p, Mapping) and p.get("type") == "tool_result":
                texts.append(_text_of(p.get("content")))
        return "".join(texts)
    return ""


def messages_from_openai(body: Mapping[str, Any]) -> list[ChatMessage]:
    raw = body.get("messages")
    if not isinstance(raw, list):
        return []
    return [ChatMessage(str(m.get("role", "user")), _text_of(m.get("content"))) for m in raw if isinstance(m, Mapping)]


def messages_from_anthropic(body: Mapping[str, Any]) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    system = body.get("system")
    if system:
        out.append(ChatMessage("system", _text_of(system)))
    raw = body.get("messages")
    if isinstance(raw, list):
        out.extend(
            ChatMessage(str(m.get("role", "user")), _text_of(m.get("content"))) for m in raw if isinstance(m, Mapping)
        )
    return out


# -- OpenAI ------------------------------------------------------------------------------------------


def openai_completion(answer: Answer, model: str, created: int) -> bytes:
    return dumps(
        {
            "id": f"chatcmpl-{answer.digest}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_sim",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": answer.finish,
                }
            ],
            "usage": {
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "total_tokens": answer.prompt_tokens + answer.completion_tokens,
            },
        }
    )


def openai_stream(answer: Answer, model: str, created: int, include_usage: bool) -> list[bytes]:
    """SSE events: role chunk, one chunk per token, the finish chunk, the usage chunk if asked, [DONE]."""
    base = {
        "id": f"chatcmpl-{answer.digest}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_sim",
    }
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + dumps({**base, "choices": [choice], **extra}) + b"\n\n"

    events = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    events.extend(chunk({"content": piece}, None) for piece in answer.pieces)
    events.append(chunk({}, answer.finish))
    if include_usage:
        usage = {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        }
        events.append(b"data: " + dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def openai_error(message: str, etype: str, code: str | None, param: str | None = None) -> bytes:
    return dumps({"error": {"message": message, "type": etype, "param": param, "code": code}})


def openai_models(models: Sequence[str], created: int) -> bytes:
    return dumps(
        {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": created, "owned_by": "sim"} for m in models],
        }
    )


# -- Anthropic ---------------------------------------------------------------------------------------

_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens"}
_SCHEMA_VALUES: Mapping[str, Any] = {"integer": 7, "number": 2.5, "boolean": True, "array": [], "object": {}}


@attrs.frozen
class ToolUse:
    """The tool the simulated model calls, with an input built from the tool's schema."""

    id: str
    name: str
    input: Mapping[str, Any]

    @property
    def json(self) -> str:
        return json.dumps(dict(self.input), separators=(",", ":"))

    @property
    def tokens(self) -> int:
        return len(get_encoding("cl100k_base").encode_ordinary(self.json))


def tool_use_for(body: Mapping[str, Any], answer: Answer) -> ToolUse | None:
    """A tool call when tools are offered (and tool_choice is not none) and the last turn is not a tool
    result: the named tool of `tool_choice`, else the first; each schema property gets a value of its type
    (strings: the answer's first word)."""
    tools, choice, messages = body.get("tools"), body.get("tool_choice"), body.get("messages")
    if not (isinstance(tools, list) and tools and isinstance(messages, list) and messages):
        return None
    if isinstance(choice, Mapping) and choice.get("type") == "none":
        return None
    last = messages[-1].get("content") if isinstance(messages[-1], Mapping) else None
    if isinstance(last, list) and any(isinstance(b, Mapping) and b.get("type") == "tool_result" for b in last):
        return None
    wanted = choice.get("name") if isinstance(choice, Mapping) and choice.get("type") == "tool" else None
    named = [t for t in tools if isinstance(t, Mapping) and isinstance(t.get("name"), str)]
    tool = next((t for t in named if t["name"] == wanted), named[0] if named else None)
    if tool is None:
        return None
    schema = tool.get("input_schema")
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    values: dict[str, Any] = {}
    for name, spec in (props or {}).items():
        kind = spec.get("type") if isinstance(spec, Mapping) else None
        values[name] = answer.pieces[-1].strip() if kind == "string" else _SCHEMA_VALUES.get(str(kind))
    return ToolUse(f"toolu_{answer.digest}", tool["name"], values)


def _anthropic_usage(answer: Answer, tool: ToolUse | None) -> dict[str, int]:
    output = answer.completion_tokens + (tool.tokens if tool is not None else 0)
    return {"input_tokens": answer.prompt_tokens, "output_tokens": output}


def anthropic_message(answer: Answer, model: str, tool: ToolUse | None = None) -> bytes:
    content: list[dict[str, Any]] = [{"type": "text", "text": answer.text}]
    if tool is not None:
        content.append({"type": "tool_use", "id": tool.id, "name": tool.name, "input": dict(tool.input)})
    return dumps(
        {
            "id": f"msg_{answer.digest}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": "tool_use" if tool is not None else _ANTHROPIC_STOP[answer.finish],
            "stop_sequence": None,
            "usage": _anthropic_usage(answer, tool),
        }
    )


def _sse(event: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + dumps(data) + b"\n\n"


def _tool_events(tool: ToolUse) -> list[bytes]:
    """Content block 1: the tool_use block, its input sent in three pieces of JSON text."""
    text = tool.json
    cuts = [0, len(text) // 3, 2 * len(text) // 3, len(text)]
    block = {"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}}
    events = [_sse("content_block_start", {"type": "content_block_start", "index": 1, "content_block": block})]
    events.extend(
        _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": piece}},
        )
        for piece in (text[a:b] for a, b in itertools.pairwise(cuts))
        if piece
    )
    events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": 1}))
    return events


def anthropic_stream(answer: Answer, model: str, tool: ToolUse | None = None) -> tuple[list[bytes], int]:
    """Events in the documented order; returns them and the index of the first content delta."""
    start = {
        "type": "message_start",
        "message": {
            "id": f"msg_{answer.digest}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": 1},
        },
    }
    events = [
        _sse("message_start", start),
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        _sse("ping", {"type": "ping"}),
    ]
    first_delta = len(events)
    events.extend(
        _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
        )
        for piece in answer.pieces
    )
    events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    if tool is not None:
        events.extend(_tool_events(tool))
    stop = "tool_use" if tool is not None else _ANTHROPIC_STOP[answer.finish]
    events.append(
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": _anthropic_usage(answer, tool)["output_tokens"]},
            },
        )
    )
    events.append(_sse("message_stop", {"type": "message_stop"}))
    return events, first_delta


def anthropic_error(etype: str, message: str) -> bytes:
    return dumps({"type": "error", "error": {"type": etype, "message": message}})
