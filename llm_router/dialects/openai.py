"""The OpenAI dialect (chat completions, completions, embeddings): the hub itself.

A client of this dialect needs no translation: what a provider turns into the hub is
what the client reads. What is left is reading the answers the router passes on
untouched (their usage, their end) and replaying a whole answer as the stream it would
have been.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from ..hub.chat import chunk_error
from ..hub.sse import DONE, event_fields, frame, json_object, openai_chunk_usage
from ..hub.stream import STREAM_ERROR, Dialect, Usage, openai_error_event

__all__ = ["DIALECT", "OpenAIDialect", "OpenAIPassthrough", "filter_only"]

# Route kind → path below an OpenAI-compatible API root.
_PATHS: Final = {"chat": "chat/completions", "completions": "completions",
                 "embeddings": "embeddings"}


def filter_only(raw: bytes) -> bool:
    """Whether a stream event is one of Azure's content-filter chunks, which carry no part
    of the answer: ``choices: []`` with only ``prompt_filter_results`` (how Azure opens a
    stream), or choices holding only ``content_filter_results`` (no delta, text, finish
    reason). Not one: an error, a usage chunk, anything without filter results."""
    _, data = event_fields(raw)
    if b"filter_results" not in data:
        return False
    doc = json_object(data)
    if doc is None or doc.get("error") is not None or doc.get("usage") is not None:
        return False
    choices = doc.get("choices")
    if choices is None:
        return True
    if not isinstance(choices, list):
        return False
    return all(isinstance(c, dict) and not c.get("delta") and not c.get("text")
               and c.get("finish_reason") is None for c in choices)


class OpenAIPassthrough:
    """An OpenAI stream passed on as sent, read for its usage and its ``[DONE]``; the
    usage-only chunk the router asked for is hidden from a client that did not."""

    __slots__ = ("done", "failure", "include_usage", "usage")

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.usage = Usage()
        self.done = False
        self.failure: str | None = None

    def feed(self, raw: bytes) -> bytes:
        if self.failure is not None:
            return b""  # nothing may follow an error chunk (its [DONE] went with it)
        _, data = event_fields(raw)
        if data == b"[DONE]":
            self.done = True
            return raw
        if b'"error"' in data:
            chunk = json_object(data)
            if chunk is not None and chunk_error(chunk) is not None:
                # An error reported in-band (vLLM, OpenRouter; a Bedrock exception frame):
                # the client gets it as sent and the stream ends, counted as failed.
                self.failure = STREAM_ERROR
                return raw + DONE
        usage, usage_only = openai_chunk_usage(data)
        if usage is not None:
            self.usage = Usage.from_openai(usage)
            if usage_only and not self.include_usage:
                return b""
        return raw

    def feed_batch(self, batch: list[bytes]) -> bytes:
        """What :meth:`feed` of each event in turn would send, joined."""
        return self.feed_run(batch[0] if len(batch) == 1 else b"".join(batch))

    def feed_run(self, run: bytes) -> bytes:
        """What :meth:`feed` of each event of ``run`` in turn would send, joined. ``run``
        is whole events joined, each ending with its first blank line
        (:meth:`SSEParser.feed_run <llm_router.hub.sse.SSEParser.feed_run>`).

        Most events are content chunks that pass as sent, and reading each one's fields
        was the larger part of a stream's own cost (bench/README.md, issue 27). Only an
        event holding ``[DONE]``, ``"error"`` or a ``"usage":`` not followed by ``null``
        can be changed or counted by :meth:`feed`, and none of these can span two events:
        they are found in the joined bytes, only their events (from the blank line
        before to the one after) go through :meth:`feed`, and the runs between pass as
        one slice.
        """
        if self.failure is not None:
            return b""
        marked: list[int] = []
        error = b'"error"' in run
        if error:
            at = run.find(b'"error"')
            while at >= 0:
                marked.append(at)
                at = run.find(b'"error"', at + 7)
        # A stream's last read ends with its [DONE] event: with no error in the run, any
        # other [DONE] in it passes as sent and changes nothing, so it is not searched.
        ends_done = not error and run.endswith(DONE) and (len(run) == len(DONE)
                                                          or run[-16:-14] == b"\n\n")
        if not ends_done:
            at = run.find(b"[DONE]")
            while at >= 0:
                marked.append(at)
                at = run.find(b"[DONE]", at + 6)
        if ends_done and self.include_usage and self._last_usage(run):
            return run
        usages = run.count(b'"usage":')
        if usages:
            # "usage":null is in every chunk of a stream that asked for usage: find the
            # others from the end, where the usage chunk is.
            # (Those not followed by exactly "null" are counted; one with " null" is
            # then seen and passed over in the loop, cheaper than a third scan.)
            left = usages - run.count(b'"usage":null')
            at = len(run)
            while left > 0:
                at = run.rfind(b'"usage":', 0, at)
                if run.startswith(b"null", at + 8):
                    continue
                if not run.startswith(b" null", at + 8):
                    marked.append(at)
                left -= 1
        if not marked:
            self.done = self.done or ends_done
            return run
        # The pieces sent, once an event is changed (feed returns a new object then; the
        # usual marked event, the usage chunk of a client that asked for it, passes as
        # is, and so does the run: no copy of it).
        out: list[bytes] | None = None
        copied = 0  # run[:copied] is in out
        start = 0  # the end of the last event read
        if len(marked) > 1:
            marked.sort()
        for at in marked:
            if at < start:
                continue  # in the event just read
            begin = run.rfind(b"\n\n", start, at) + 2 if at else 0
            if begin < start + 2:
                begin = start  # the first event after the last one read (or the run's)
            end = run.find(b"\n\n", at) + 2
            event = run[begin:end]
            sent = self.feed(event)
            start = end
            if sent is not event:
                if out is None:
                    out = []
                if begin > copied:
                    out.append(run[copied:begin])
                out.append(sent)
                copied = end
            if self.failure is not None:
                assert out is not None  # the error chunk went out with [DONE] added
                return b"".join(out)  # nothing follows an error chunk
        self.done = self.done or ends_done
        if out is None:
            return run
        if copied < len(run):
            out.append(run[copied:])
        return b"".join(out)

    def _last_usage(self, run: bytes) -> bool:
        """:meth:`feed_run` of a stream's last run (no error in it, [DONE] at its end)
        for a client that asked for usage, when its last ``"usage":`` is not null and
        its event reports a usage: nothing in the run is changed then, and of the
        usages :meth:`feed` would read in turn the last one is what counts, so that
        event alone is read, found from the run's end instead of counting every
        ``"usage":`` and ``"usage":null`` (two scans of the whole run). False, with
        nothing changed, when the run is not of that kind."""
        at = run.rfind(b'"usage":')
        if at < 0:
            self.done = True
            return True
        if run.startswith(b"null", at + 8) or run.startswith(b" null", at + 8):
            return False  # another usage may be earlier: counted as for any run
        begin = run.rfind(b"\n\n", 0, at)
        begin = begin + 2 if begin >= 0 else 0
        end = run.find(b"\n\n", at) + 2
        if run.startswith(b"data: ", begin) and run.find(b"\n", begin, end) == end - 2:
            # One data line, with no "error" and no [DONE] (it holds "usage":): what feed
            # reads of it is its JSON object's usage, and it passes as sent (the client
            # asked for usage). Read here, without feed's three calls to find that out.
            try:
                chunk = orjson.loads(run[begin + 6:end - 2])
            except orjson.JSONDecodeError:
                return False
            if not isinstance(chunk, dict) or (usage := chunk.get("usage")) is None:
                return False
            self.usage = Usage.from_openai(usage)
            self.done = True
            return True
        event = run[begin:end]
        before = self.usage
        if self.feed(event) is not event or self.usage is before:
            self.usage = before  # not a usage chunk after all: read the run as any other
            return False
        self.done = True
        return True

    def fail(self, message: str) -> bytes:
        if self.failure is not None:
            return b""  # the upstream's own error already ended the client's stream
        return openai_error_event(message)


class OpenAIDialect:
    """The hub as a client dialect: every transform is the identity (None)."""

    name: Final = Dialect.OPENAI

    @staticmethod
    def path(kind: str) -> str:
        return _PATHS[kind]

    @staticmethod
    def to_hub(kind: str, body: dict[str, Any], model: str) -> dict[str, Any]:
        del kind
        out = dict(body)  # shallow: only the model changes
        out["model"] = model
        return out

    @staticmethod
    def from_hub(doc: dict[str, Any], requested_model: str) -> bytes | None:
        del doc, requested_model
        return None

    @staticmethod
    def from_hub_stream(requested_model: str, include_usage: bool) -> None:
        del requested_model, include_usage
        return None

    @staticmethod
    def error_from_hub(status: int, body: bytes) -> bytes | None:
        del status, body
        return None

    @staticmethod
    def passthrough(include_usage: bool) -> OpenAIPassthrough:
        return OpenAIPassthrough(include_usage)

    @staticmethod
    def body_usage(doc: dict[str, Any]) -> Usage:
        u = doc.get("usage")
        return Usage.from_openai(u)

    @staticmethod
    def answer_events(kind: str, doc: dict[str, Any]) -> bytes | None:
        """A whole chat or completions answer as its chunk stream (KeyError, TypeError
        or ValueError when it is not one)."""
        if kind not in ("chat", "completions", "messages"):
            return None
        return _answer_events(doc)


def _answer_events(doc: dict[str, Any]) -> bytes | None:
    choices = doc["choices"]
    if not isinstance(choices, list) or not choices:
        return None
    head: dict[str, Any] = {k: doc[k] for k in ("id", "created", "model", "system_fingerprint")
                            if k in doc}
    chat = "message" in choices[0]
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    out: list[bytes] = []
    for i, choice in enumerate(choices):
        index = choice.get("index", i)
        if chat:
            message = choice["message"]
            delta: dict[str, Any] = {"role": message.get("role", "assistant"),
                                     "content": message.get("content")}
            calls = message.get("tool_calls")
            if calls:
                delta["tool_calls"] = [{"index": n, **call} for n, call in enumerate(calls)]
            if message.get("refusal"):
                delta["refusal"] = message["refusal"]
            piece = {"index": index, "delta": delta, "finish_reason": choice.get(
                "finish_reason")}
        else:
            piece = {"index": index, "text": str(choice["text"]),
                     "finish_reason": choice.get("finish_reason")}
        out.append(frame(orjson.dumps({**head, "choices": [piece]})))
    if isinstance(doc.get("usage"), dict):
        out.append(frame(orjson.dumps({**head, "choices": [], "usage": doc["usage"]})))
    out.append(DONE)
    return b"".join(out)


DIALECT: Final = OpenAIDialect()
