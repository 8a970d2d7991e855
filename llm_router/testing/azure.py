"""A fake Azure OpenAI resource and Entra ID token endpoint, written from Azure's wire.

What it checks, as Azure does:

- **Paths.** ``/openai/deployments/{deployment}/{route}?api-version=V`` (the dated API)
  and ``/openai/v1/{route}`` with the deployment as body ``model`` (the v1 API;
  ``responses`` only there). An api-version it does not know, a missing one, or an
  unknown route: 404 ``{"error": {"code": "404", "message": "Resource not found"}}``.
  A deployment it does not have: 404 ``DeploymentNotFound``.
- **Auth.** An ``api-key`` header from ``api_keys`` (any non-empty key when None), or
  ``Authorization: Bearer`` with a token this fake issued and that has not expired on
  its clock; else 401.
- **Tokens.** ``POST /{tenant}/oauth2/v2.0/token``, a form with
  ``grant_type=client_credentials``, ``client_id``, ``client_secret`` and scope
  ``https://cognitiveservices.azure.com/.default``; answers ``access_token`` and
  ``expires_in`` (``token_lifetime_s``), or Entra's ``invalid_client`` /
  ``invalid_scope`` / ``unsupported_grant_type`` errors. ``token_requests`` counts them;
  :meth:`FakeAzure.hold_tokens` keeps answers back until :meth:`FakeAzure.release_tokens`;
  :meth:`FakeAzure.revoke_tokens` makes the resource refuse the tokens issued so far,
  and ``refuse_tokens`` every token.
- **Answers.** OpenAI's shapes, reporting the deployment's underlying model, with Azure's
  additions: ``prompt_filter_results`` and per-choice ``content_filter_results``. A stream
  opens with a chunk of ``choices: []`` and only ``prompt_filter_results``, carries
  filter-only chunks (a choice without ``delta``) after its first text and after its
  finish, then the usage chunk if asked and ``[DONE]``.
- **Content filtering.** A request whose body contains :data:`FILTERED_PROMPT` gets
  Azure's 400 ``content_filter`` error; one containing :data:`FILTERED_OUTPUT` is
  answered with ``finish_reason: "content_filter"``.
- **Throttling.** :meth:`FakeAzure.throttle` arms 429s with ``retry-after-ms`` and
  ``retry-after``, as Azure sends them.

:class:`~.upstream.FakeUpstream` serves it beside its other routes (its ``azure``
attribute: tests replace it with one configured their way), so ``llm-router
fake-upstream`` speaks Azure too.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web

from . import responses as fake_responses

__all__ = [
    "API_VERSIONS",
    "DEPLOYMENTS",
    "FILTERED_OUTPUT",
    "FILTERED_PROMPT",
    "SCOPE",
    "AzureRequest",
    "FakeAzure",
    "OpenAIAnswers",
]

_Body = dict[str, Any]
_Answer = Callable[[_Body, str], _Body]
_Chunks = Callable[[_Body, str], list[_Body]]

# GA and preview versions of the dated data-plane API this fake accepts.
API_VERSIONS: Final = frozenset({"2024-02-01", "2024-06-01", "2024-10-21",
                                 "2024-12-01-preview", "2025-01-01-preview",
                                 "2025-03-01-preview", "2025-04-01-preview"})
# Deployment name -> the model it runs (what answers report as "model").
DEPLOYMENTS: Final[Mapping[str, str]] = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "my-gpt4o-deployment": "gpt-4o-2024-11-20",
    "text-embedding-3-small": "text-embedding-3-small",
}
SCOPE: Final = "https://cognitiveservices.azure.com/.default"
FILTERED_PROMPT: Final = "FILTERED-PROMPT"
FILTERED_OUTPUT: Final = "FILTERED-OUTPUT"

_DATED_ROUTES: Final = ("chat/completions", "completions", "embeddings")
_V1_ROUTES: Final = (*_DATED_ROUTES, "responses")
_SAFE: Final = {"filtered": False, "severity": "safe"}
_FILTERS_SAFE: Final = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
_FILTERS_HIT: Final = {**_FILTERS_SAFE, "violence": {"filtered": True, "severity": "medium"}}
_PROMPT_FILTERS: Final = [{"prompt_index": 0, "content_filter_results": {
    **_FILTERS_SAFE, "jailbreak": {"filtered": False, "detected": False}}}]
_NOT_FOUND: Final = {"error": {"code": "404", "message": "Resource not found"}}
_NO_DEPLOYMENT: Final = {"error": {"code": "DeploymentNotFound", "message": (
    "The API deployment for this resource does not exist. If you created the deployment "
    "within the last 5 minutes, please wait a moment and try again.")}}
_BAD_KEY: Final = {"error": {"code": "401", "message": (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API "
    "endpoint for your resource.")}}
_BAD_TOKEN: Final = {"error": {"code": "401", "message": (
    "Unauthorized. Access token is missing, invalid, audience is incorrect "
    "(https://cognitiveservices.azure.com), or have expired.")}}
_FILTERED: Final = {"error": {
    "message": ("The response was filtered due to the prompt triggering Azure OpenAI's "
                "content management policy. Please modify your prompt and retry. To learn "
                "more about our content filtering policies please read our documentation: "
                "https://go.microsoft.com/fwlink/?linkid=2198766"),
    "type": None, "param": "prompt", "code": "content_filter", "status": 400,
    "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
        **_FILTERS_HIT, "jailbreak": {"filtered": False, "detected": False}}}}}


@dataclass(frozen=True, slots=True)
class OpenAIAnswers:
    """The main fake's OpenAI answers (testing/upstream.py), passed in so neither module
    imports the other; Azure's additions are laid over them here."""

    chat_completion: _Answer
    chat_chunks: _Chunks
    text_completion: _Answer
    completion_chunks: _Chunks
    embeddings: _Answer


@dataclass(slots=True)
class AzureRequest:
    """One request to a model route, as the fake received it."""

    route: str  # chat/completions, embeddings, ...
    style: str  # "dated" | "v1"
    deployment: str
    api_version: str | None
    api_key: str | None
    token: str | None  # the bearer token, if that is how it authenticated
    body: _Body


@dataclass(slots=True)
class _Throttle:
    left: int
    key: str | None
    retry_after_ms: int
    retry_after_s: int | None


@dataclass(slots=True)
class _Tokens:
    issued: dict[str, float] = field(default_factory=dict)  # token -> expiry (fake clock)
    requests: int = 0  # token requests received
    held: asyncio.Event | None = None  # set: answer; None: answer at once


def _json(status: int, doc: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json",
                        headers=headers)


class FakeAzure:
    """An Azure OpenAI resource: deployments, keys, Entra clients and a clock.

    ``api_keys`` None accepts any non-empty ``api-key``; ``clients`` (client id ->
    secret) None accepts any client with a non-empty secret. ``clock`` decides when
    issued tokens expire (monotonic seconds; tests move it instead of waiting).
    """

    def __init__(self, *, deployments: Mapping[str, str] = DEPLOYMENTS,
                 api_versions: Collection[str] = API_VERSIONS,
                 api_keys: Collection[str] | None = None,
                 clients: Mapping[str, str] | None = None, token_lifetime_s: int = 3599,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.deployments = dict(deployments)
        self.api_versions = frozenset(api_versions)
        self.api_keys = None if api_keys is None else frozenset(api_keys)
        self.clients = None if clients is None else dict(clients)
        self.token_lifetime_s = token_lifetime_s
        self.clock = clock
        # True: every bearer token is refused, however fresh (an identity with no role
        # on the resource); api-key requests are unaffected.
        self.refuse_tokens = False
        self.requests: list[AzureRequest] = []
        self._tokens = _Tokens()
        self._throttles: list[_Throttle] = []
        self._answers: OpenAIAnswers | None = None  # given by install()

    # ------------------------------------------------------------ test controls

    @property
    def token_requests(self) -> int:
        """Token requests received (answered or held)."""
        return self._tokens.requests

    def revoke_tokens(self) -> None:
        """Refuse every token issued so far, before its expiry (as Azure does when an
        app's access is withdrawn or its token revoked); new ones are accepted."""
        self._tokens.issued.clear()

    def hold_tokens(self) -> None:
        """Keep token answers back until :meth:`release_tokens`."""
        self._tokens.held = asyncio.Event()

    def release_tokens(self) -> None:
        held, self._tokens.held = self._tokens.held, None
        if held is not None:
            held.set()

    def throttle(self, *, times: int = 1, key: str | None = None, retry_after_ms: int = 1000,
                 retry_after_s: int | None = None) -> None:
        """Answer the next ``times`` model requests (with ``api-key`` ``key``, if given)
        429 with ``retry-after-ms`` (and ``retry-after``, if given)."""
        self._throttles.append(_Throttle(times, key, retry_after_ms, retry_after_s))

    # ------------------------------------------------------------ serving

    def install(self, app: web.Application, answers: OpenAIAnswers) -> None:
        """Add this fake's routes to ``app`` (they do not clash with OpenAI's ``/v1/``),
        answering with ``answers``."""
        self._answers = answers
        app.router.add_post("/openai/deployments/{deployment}/{route:.+}", self._dated)
        app.router.add_post("/openai/v1/{route:.+}", self._v1)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)

    async def _dated(self, request: web.Request) -> web.StreamResponse:
        route = request.match_info["route"]
        version = request.query.get("api-version")
        if route not in _DATED_ROUTES or version not in self.api_versions:
            return _json(404, _NOT_FOUND)
        return await self._model_route(request, route, "dated",
                                       request.match_info["deployment"], version)

    async def _v1(self, request: web.Request) -> web.StreamResponse:
        route = request.match_info["route"]
        if route not in _V1_ROUTES:
            return _json(404, _NOT_FOUND)
        return await self._model_route(request, route, "v1", None, None)

    async def _model_route(self, request: web.Request, route: str, style: str,
                           deployment: str | None, version: str | None
                           ) -> web.StreamResponse:
        raw = await request.read()
        api_key = request.headers.get("api-key")
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth[:7].lower() == "bearer " else None
        if not self._authorized(api_key, token):
            return _json(401, _BAD_TOKEN if token is not None else _BAD_KEY)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return _json(400, {"error": {"code": "BadRequest", "message": (
                "Invalid JSON in the request body."), "param": None, "type": None}})
        if deployment is None:  # v1: the deployment is the body's model
            model = body.get("model")
            if not isinstance(model, str) or not model:
                return _json(400, {"error": {"message": "you must provide a model parameter",
                                             "type": "invalid_request_error",
                                             "param": None, "code": None}})
            deployment = model
        self.requests.append(AzureRequest(route, style, deployment, version, api_key, token,
                                          body))
        if deployment not in self.deployments:
            return _json(404, _NO_DEPLOYMENT)
        throttled = self._take_throttle(api_key)
        if throttled is not None:
            return throttled
        if FILTERED_PROMPT.encode() in raw:
            return _json(400, _FILTERED)
        model = self.deployments[deployment]
        answers = self._answers
        assert answers is not None  # installed
        stream = body.get("stream") is True and route != "embeddings"
        filtered = FILTERED_OUTPUT.encode() in raw
        if route == "responses":
            if stream:
                return await _sse(request, [b"event: %b\ndata: %b\n\n" % (
                    name.encode(), orjson.dumps(data))
                    for name, data in fake_responses.response_events(body, model)])
            return _json(200, fake_responses.response_object(body, model))
        if route == "embeddings":
            return _json(200, answers.embeddings(body, model))
        chat = route == "chat/completions"
        if stream:
            chunks = (answers.chat_chunks(body, model) if chat
                      else answers.completion_chunks(body, model))
            return await _sse(request, [b"data: %b\n\n" % orjson.dumps(c)
                                        for c in _azure_chunks(chunks, filtered)]
                              + [b"data: [DONE]\n\n"])
        answer = (answers.chat_completion(body, model) if chat
                  else answers.text_completion(body, model))
        answer["prompt_filter_results"] = _PROMPT_FILTERS
        for choice in answer["choices"]:
            choice["content_filter_results"] = _FILTERS_HIT if filtered else _FILTERS_SAFE
            if filtered:
                choice["finish_reason"] = "content_filter"
        return _json(200, answer)

    def _authorized(self, api_key: str | None, token: str | None) -> bool:
        if api_key is not None:
            return bool(api_key) and (self.api_keys is None or api_key in self.api_keys)
        if token is None or self.refuse_tokens:
            return False
        expiry = self._tokens.issued.get(token)
        return expiry is not None and self.clock() < expiry

    def _take_throttle(self, api_key: str | None) -> web.Response | None:
        for throttle in self._throttles:
            if throttle.key is not None and throttle.key != api_key:
                continue
            throttle.left -= 1
            if throttle.left <= 0:
                self._throttles.remove(throttle)
            headers = {"retry-after-ms": str(throttle.retry_after_ms),
                       "x-ratelimit-remaining-requests": "0"}
            wait_s = throttle.retry_after_ms / 1000
            if throttle.retry_after_s is not None:
                headers["retry-after"] = str(throttle.retry_after_s)
                wait_s = throttle.retry_after_s
            return _json(429, {"error": {"code": "429", "message": (
                "Requests to the ChatCompletions_Create Operation under Azure OpenAI API "
                "have exceeded call rate limit of your current OpenAI S0 pricing tier. "
                f"Please retry after {wait_s:g} seconds.")}}, headers)
        return None

    async def _token(self, request: web.Request) -> web.StreamResponse:
        tokens = self._tokens
        tokens.requests += 1
        form = await request.post()
        if tokens.held is not None:
            await tokens.held.wait()
        if form.get("grant_type") != "client_credentials":
            return _entra_error(400, "unsupported_grant_type", "AADSTS70003")
        client, secret = form.get("client_id"), form.get("client_secret")
        if not isinstance(client, str) or not isinstance(secret, str) or not secret or (
                self.clients is not None and self.clients.get(client) != secret):
            return _entra_error(401, "invalid_client", "AADSTS7000215")
        if form.get("scope") != SCOPE:
            return _entra_error(400, "invalid_scope", "AADSTS1002012")
        token = "eyJ0eXAiOiJKV1QifQ." + secrets.token_urlsafe(24)
        tokens.issued[token] = self.clock() + self.token_lifetime_s
        return _json(200, {"token_type": "Bearer", "expires_in": self.token_lifetime_s,
                           "ext_expires_in": self.token_lifetime_s, "access_token": token})


def _entra_error(status: int, error: str, code: str) -> web.Response:
    return _json(status, {"error": error, "error_description": f"{code}: rejected by the fake",
                          "error_codes": [int(code.removeprefix("AADSTS"))],
                          "trace_id": secrets.token_hex(8),
                          "correlation_id": secrets.token_hex(8)})


def _azure_chunks(chunks: list[_Body], filtered: bool) -> list[_Body]:
    """OpenAI chunks as Azure streams them: a prompt-filter chunk first, filter results on
    every choice, filter-only chunks after the first text and after the finish."""
    filter_only = {"choices": [{"index": 0, "finish_reason": None,
                                "content_filter_results": _FILTERS_SAFE,
                                "content_filter_offsets": {"check_offset": 0,
                                                           "start_offset": 0,
                                                           "end_offset": 1}}],
                   "created": 0, "id": "", "model": "", "object": ""}
    out: list[_Body] = [{"choices": [], "created": 0, "id": "", "model": "", "object": "",
                         "prompt_filter_results": _PROMPT_FILTERS}]
    texts = 0
    for chunk in chunks:
        choices = chunk.get("choices") or []
        for choice in choices:
            delta = choice.get("delta") or {}
            choice["content_filter_results"] = {} if "role" in delta else _FILTERS_SAFE
            if choice.get("finish_reason") and filtered:
                choice["finish_reason"] = "content_filter"
                choice["content_filter_results"] = _FILTERS_HIT
        out.append(chunk)
        if any((c.get("delta") or {}).get("content") or c.get("text") for c in choices):
            texts += 1
            if texts == 1:
                out.append(filter_only)
        if any(c.get("finish_reason") for c in choices):
            out.append(filter_only)
    return out


async def _sse(request: web.Request, frames: list[bytes]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        for frame in frames:
            await response.write(frame)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away mid-stream
    return response
