"""Token counts of one upstream answer, read once and validated where they come in.

Upstream usage is untrusted input: an upstream once answered ``"prompt_tokens": 1e30``,
and the number went on to break the snapshot, ``/metrics`` and the caller's budget.
So every count is read here, by one reader per usage dialect:

* :meth:`Usage.from_openai`: the hub's (OpenAI chat) ``usage`` object. Providers that
  translate their wire to the hub (Bedrock, Gemini, …) hand their counts on in this
  shape, and should pass a count they cannot read on *as sent* (:func:`summed`) so
  that this reader judges it;
* :class:`AnthropicUsage`: Anthropic's, cumulative over ``message_start`` and
  ``message_delta``;
* :meth:`Usage.from_responses`: the Responses API's (``responses: native`` members).

A count passes when it is a non-negative integer no larger than
:data:`TOKEN_COUNT_LIMIT` (10**9 tokens, hundreds of times the largest context window);
an integral float such as ``12.0`` reads as 12. Anything else (``1e30``, ``-5``,
``"12"``, ``true``, an object) is *rejected*: the field reads as 0 and
:attr:`Usage.rejected` says which fields, so the request path counts the router's own
estimate instead, logs it and counts it in
``llm_router_upstream_usage_rejected_total`` (docs/observability.md). A field that is
absent or ``null`` is not rejected: it reads as 0, as before. Translations shown to a
client are built from the validated counts too.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "BYTES_PER_TOKEN",
    "CACHED",
    "COMPLETION",
    "PROMPT",
    "TOKEN_COUNT_LIMIT",
    "AnthropicUsage",
    "Usage",
    "bounded_count",
    "summed",
    "token_count",
]

TOKEN_COUNT_LIMIT: Final = 1_000_000_000
# The router's own token estimates (a prompt's reservation, count_tokens without an
# upstream) before an upstream counts: about one token per 4 bytes (characters) of text.
BYTES_PER_TOKEN: Final = 4

# Usage.rejected bits: which counts the upstream sent out of range.
PROMPT: Final = 1
COMPLETION: Final = 2
CACHED: Final = 4


def token_count(value: object) -> int | None:
    """``value`` as a token count, or None when it is not one (see the module doc)."""
    if type(value) is int:  # bool is a subclass of int, and not a count
        return value if 0 <= value <= TOKEN_COUNT_LIMIT else None
    if type(value) is float and value.is_integer() and 0 <= value <= TOKEN_COUNT_LIMIT:
        return int(value)
    return None


def bounded_count(n: int) -> int:
    """``n`` within ``[0, TOKEN_COUNT_LIMIT]``: what a sink (counters, ledger, metrics)
    applies to a count it is handed, so that no bug upstream of it can reach disk."""
    return 0 if n < 0 else n if n <= TOKEN_COUNT_LIMIT else TOKEN_COUNT_LIMIT


def summed(*values: object) -> object:
    """For translators to the hub: the sum of counts that are all valid (absent ones
    count 0), else the first invalid one as sent, for :meth:`Usage.from_openai` to
    reject."""
    total = 0
    for value in values:
        if value is None:
            continue
        n = token_count(value)
        if n is None:
            return value
        total += n
    return total


def _field(doc: dict[str, Any], name: str) -> int | None:
    # Absent or null: 0, not a rejection. Present: a valid count, or None.
    value = doc.get(name)
    return 0 if value is None else token_count(value)


def _detail(doc: dict[str, Any], group: str, name: str) -> int | None:
    details = doc.get(group)
    return _field(details, name) if isinstance(details, dict) else 0


class Usage:
    """Token counts of one response, whatever dialect reported them; every count is
    within ``[0, TOKEN_COUNT_LIMIT]``. ``rejected``: the :data:`PROMPT`,
    :data:`COMPLETION` and :data:`CACHED` bits of counts the upstream sent out of range
    (they read 0 here)."""

    __slots__ = ("cached", "completion", "prompt", "reasoning", "rejected")

    def __init__(self, prompt: int = 0, completion: int = 0, cached: int = 0,
                 reasoning: int = 0, rejected: int = 0) -> None:
        self.prompt = prompt
        self.completion = completion
        self.cached = cached
        self.reasoning = reasoning  # of the completion, tokens spent reasoning
        self.rejected = rejected

    @classmethod
    def from_openai(cls, u: object) -> Usage:
        """An OpenAI (hub) ``usage`` object; None (no usage reported) reads as zeros."""
        if type(u) is dict:
            # The usual object, read in one pass: both counts plain ints in range, the
            # details absent or objects whose counts are absent or in range. Anything
            # else takes the field-by-field reading below, which says what it rejects.
            prompt, completion = u.get("prompt_tokens"), u.get("completion_tokens")
            if type(prompt) is int and type(completion) is int \
                    and 0 <= prompt <= TOKEN_COUNT_LIMIT \
                    and 0 <= completion <= TOKEN_COUNT_LIMIT:
                details = u.get("prompt_tokens_details")
                cached: Any = 0
                if details is not None:
                    cached = details.get("cached_tokens") if type(details) is dict else -1
                    if cached is None:
                        cached = 0
                    elif type(cached) is not int or not 0 <= cached <= TOKEN_COUNT_LIMIT:
                        cached = -1
                details = u.get("completion_tokens_details")
                reasoning: Any = 0
                if details is not None:
                    reasoning = details.get("reasoning_tokens") if type(details) is dict \
                        else -1
                    if reasoning is None:
                        reasoning = 0
                    elif type(reasoning) is not int \
                            or not 0 <= reasoning <= TOKEN_COUNT_LIMIT:
                        reasoning = -1
                if cached >= 0 and reasoning >= 0:  # -1: not a count, read below
                    return cls(prompt, completion, cached, reasoning)
        if not isinstance(u, dict):
            return cls() if u is None else cls(rejected=PROMPT | COMPLETION)
        return cls._of(_field(u, "prompt_tokens"), _field(u, "completion_tokens"),
                       _detail(u, "prompt_tokens_details", "cached_tokens"),
                       _detail(u, "completion_tokens_details", "reasoning_tokens"))

    @classmethod
    def from_responses(cls, u: object) -> Usage:
        """A Responses API ``usage`` object (``input_tokens``, ``output_tokens``)."""
        if not isinstance(u, dict):
            return cls() if u is None else cls(rejected=PROMPT | COMPLETION)
        return cls._of(_field(u, "input_tokens"), _field(u, "output_tokens"),
                       _detail(u, "input_tokens_details", "cached_tokens"),
                       _detail(u, "output_tokens_details", "reasoning_tokens"))

    @classmethod
    def from_anthropic(cls, u: object) -> Usage:
        """One Anthropic ``usage`` object (a whole message's)."""
        acc = AnthropicUsage()
        acc.add(u)
        return acc.usage

    @classmethod
    def _of(cls, prompt: int | None, completion: int | None, cached: int | None,
            reasoning: int | None) -> Usage:
        rejected = ((PROMPT if prompt is None else 0) | (COMPLETION if completion is None else 0)
                    | (CACHED if cached is None else 0))
        return cls(prompt or 0, completion or 0, cached or 0, reasoning or 0, rejected)

    def openai(self) -> dict[str, Any]:
        """These counts as an OpenAI ``usage`` object (for translated answers)."""
        out: dict[str, Any] = {"prompt_tokens": self.prompt,
                               "completion_tokens": self.completion,
                               "total_tokens": self.prompt + self.completion}
        if self.cached:
            out["prompt_tokens_details"] = {"cached_tokens": self.cached}
        return out

    def anthropic(self, output: bool = True) -> dict[str, int]:
        """These counts as an Anthropic ``usage`` object (for translated answers): cache
        reads apart from ``input_tokens``, as Anthropic reports them, so the two add up
        to the prompt; ``output`` False leaves ``output_tokens`` out."""
        cached = min(self.cached, self.prompt)
        out = {"input_tokens": self.prompt - cached}
        if cached:
            out["cache_read_input_tokens"] = cached
        if output:
            out["output_tokens"] = self.completion
        return out

    def responses(self) -> dict[str, Any]:
        """These counts as a Responses API ``usage`` object (for translated answers)."""
        return {"input_tokens": self.prompt,
                # cache_write_tokens: required by OpenAI's ResponseUsage schema; no
                # member type reports cache writes in these counts, so 0.
                "input_tokens_details": {"cached_tokens": self.cached,
                                         "cache_write_tokens": 0},
                "output_tokens": self.completion,
                "output_tokens_details": {"reasoning_tokens": self.reasoning},
                "total_tokens": self.prompt + self.completion}


# Anthropic fields counted as prompt tokens (cache reads are also reported as cached).
_ANTHROPIC_PROMPT: Final = ("input_tokens", "cache_read_input_tokens",
                            "cache_creation_input_tokens")
_ANTHROPIC_BITS: Final = {"input_tokens": PROMPT, "cache_read_input_tokens": PROMPT | CACHED,
                          "cache_creation_input_tokens": PROMPT, "output_tokens": COMPLETION}


class AnthropicUsage:
    """Anthropic usage over one answer. Its counts are cumulative: a later value of a
    field replaces an earlier one, and a field a later event omits keeps its value
    (``message_start`` says ``output_tokens: 1``; ``message_delta`` gives the total)."""

    __slots__ = ("_bad", "_fields", "usage")

    def __init__(self) -> None:
        self._fields: dict[str, int] = {}
        self._bad: dict[str, int] = {}  # field → its Usage.rejected bits, until a valid value
        self.usage = Usage()  # the counts so far

    def add(self, u: object) -> None:
        """Take one event's ``usage`` object (None: the event had none)."""
        if u is None:
            return
        if not isinstance(u, dict):
            self._bad["usage"] = PROMPT | COMPLETION
        else:
            for name, bits in _ANTHROPIC_BITS.items():
                value = u.get(name)
                if value is None:
                    continue
                n = token_count(value)
                if n is None:
                    self._bad[name] = bits
                else:
                    self._fields[name] = n
                    self._bad.pop(name, None)
        f = self._fields
        rejected = 0
        for bits in self._bad.values():
            rejected |= bits
        self.usage = Usage(bounded_count(sum(f.get(name, 0) for name in _ANTHROPIC_PROMPT)),
                           f.get("output_tokens", 0), f.get("cache_read_input_tokens", 0),
                           0, rejected)
