"""A streamed response read as server-sent events and turned into `StreamChunk`s.

Subclasses say what each event means (`on_event`); this class owns the reading, the error translation
(a broken connection mid-stream is `StreamInterrupted`, never a bare httpx error), and the rule that a
stream which ends without the provider's end marker was cut, not finished.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httpx
import trio

from apikeyrouter.adapters._http import (
    HTTPAdapterBase,
    SSEDecoder,
    SSEEvent,
    SSETooLarge,
    UpstreamResponse,
    log_bad_usage,
    scrub,
    usage_count,
)
from apikeyrouter.domain.failures import FailureClass
from apikeyrouter.domain.request import StreamChunk, Usage
from apikeyrouter.domain.signal import QuotaSignal
from apikeyrouter.errors import StreamInterrupted, UpstreamError
from apikeyrouter.secret import Secret

__all__ = ["SSEStream"]

# After the end marker, what is left of the body (the chunked terminator, a stray newline) is read so the
# connection can carry the next request; a server that sends more than this, or takes longer, loses it.
_DRAIN_BYTES = 64 * 1024
_DRAIN_S = 1.0


class SSEStream:
    def __init__(
        self,
        adapter: HTTPAdapterBase,
        response: UpstreamResponse,
        secret: Secret,
        *,
        model: str,
        estimated_input: int,
        max_output: int | None = None,
    ) -> None:
        self.adapter = adapter
        self.signal: QuotaSignal = adapter.signal_from(response.headers)
        self.model = model
        self._response = response
        self._secret = secret
        self._bytes: AsyncIterator[bytes] = response.aiter_bytes()
        self._decoder = SSEDecoder()
        self._pending: deque[StreamChunk] = deque()
        self._estimated_input = estimated_input
        self._max_output = max_output
        self._bad_usage = False  # the provider reported a count that is not one: bill the worst case
        self._input_tokens: int | None = None
        self._output_tokens: int | None = None
        self._deltas = 0
        self.finished = False  # the provider's end marker was seen
        self._eof = False
        self._body_ended = False  # the response body was read to its end
        self._failure: UpstreamError | None = None

    # -- what subclasses report ------------------------------------------------------------------------

    def on_event(self, event: SSEEvent) -> list[StreamChunk]:  # pragma: no cover - abstract
        raise NotImplementedError

    def note_usage(
        self,
        input_tokens: Any = None,
        output_tokens: Any = None,
        *,
        need_input: bool = False,
        need_output: bool = False,
    ) -> None:
        """Counts as the provider reported them (None: not in this event, unless `need_*` says it must be).
        A count that is not a sane token count makes the stream's usage the worst case, for good."""
        i, o = usage_count(input_tokens), usage_count(output_tokens)
        bad_i = i is None and (input_tokens is not None or need_input)
        bad_o = o is None and (output_tokens is not None or need_output)
        if bad_i or bad_o:
            if not self._bad_usage:
                self._bad_usage = True
                log_bad_usage(self.adapter.provider, self.model, input_tokens, output_tokens)
            return
        if i is not None:
            self._input_tokens = i
        if o is not None:
            self._output_tokens = o

    def note_delta(self) -> None:
        self._deltas += 1

    def interrupted(
        self,
        message: str,
        failure: FailureClass,
        *,
        status: int | None = None,
        code: str | None = None,
        error_type: str | None = None,
    ) -> StreamInterrupted:
        return StreamInterrupted(
            f"{self.adapter.provider}: stream interrupted: {scrub(message, self._secret)}",
            failure=failure,
            status=status,
            provider=self.adapter.provider,
            code=None if code is None else scrub(code, self._secret)[:100],
            error_type=None if error_type is None else scrub(error_type, self._secret)[:100],
            signal=self.signal,
            retry_after=self.signal.retry_after_s,
        )

    # -- what callers read -----------------------------------------------------------------------------

    @property
    def usage(self) -> Usage | None:
        """Reported usage; before the provider reports it, our estimate of input and the deltas seen; after an
        impossible report, the worst case (estimated input, all of max_output)."""
        if self._bad_usage:
            output = max(self._max_output or 0, self._deltas)
            return Usage(self._estimated_input, output, estimated=True)
        if self._input_tokens is None and self._output_tokens is None and self._deltas == 0:
            return None
        return Usage(
            input_tokens=self._input_tokens if self._input_tokens is not None else self._estimated_input,
            # Every text delta carries at least one token, so the deltas seen bound the count from below
            # when the provider's own number is missing or stale (Anthropic's message_start says 1).
            output_tokens=max(self._output_tokens or 0, self._deltas),
            estimated=self._input_tokens is None,
        )

    def __aiter__(self) -> SSEStream:
        return self

    async def __anext__(self) -> StreamChunk:
        # Chunks decoded before a failure are delivered first; the failure is raised once they are drained,
        # so the caller sees (and accounts for) every byte that did arrive.
        while not self._pending:
            if self._failure is not None:
                failure, self._failure = self._failure, None
                self._eof = True
                raise failure
            if self._eof:
                if self.finished and not self._body_ended:
                    await self._drain()
                raise StopAsyncIteration
            try:
                raw = await self._bytes.__anext__()
            except StopAsyncIteration:
                self._eof = self._body_ended = True
                events = self._decoder.flush()
            except httpx.HTTPError as exc:
                self._eof = True
                err = self.adapter.transport_error(exc, self._secret, streaming=True, signal=self.signal)
                err.__cause__ = exc
                self._failure = err
                continue
            else:
                try:
                    events = self._decoder.feed(raw)
                except SSETooLarge as exc:
                    self._eof = True
                    self._failure = self.interrupted(str(exc), FailureClass.SERVER_ERROR)
                    continue
            for event in events:
                if self.finished:
                    break
                try:
                    self._pending.extend(self.on_event(event))
                except StreamInterrupted as exc:
                    self._failure = exc
                    self._eof = True
                    break
                except Exception as exc:  # a bug reading the event: typed, so the request path can settle
                    err = self.adapter.adapter_error(exc, self._secret)
                    self._failure = StreamInterrupted(
                        err.message, failure=err.failure, provider=err.provider, signal=self.signal
                    )
                    self._eof = True
                    break
            if self.finished:
                self._eof = True
            elif self._eof and self._failure is None:
                self._failure = self.interrupted("the stream ended without its end marker", FailureClass.CONNECTION)
        return self._pending.popleft()

    async def _drain(self) -> None:
        """Read the body to its end after the end marker, so that the connection goes back to the pool
        instead of being closed half-read. Bounded in bytes and time; a failure here changes nothing
        (the stream is complete), it only costs the connection."""
        self._body_ended = True
        left = _DRAIN_BYTES
        with trio.move_on_after(_DRAIN_S):
            try:
                async for raw in self._bytes:
                    left -= len(raw)
                    if left < 0:
                        return
            except httpx.HTTPError:
                return
