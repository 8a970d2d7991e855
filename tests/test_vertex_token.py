"""Vertex access tokens against the fake's OAuth endpoint, which verifies each
assertion's RS256 signature with the test key pair's public key."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from llm_router.providers.vertex.token import SCOPE, TokenCache, TokenError, assertion

from .conftest import Upstream
from .google_keys import service_account


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_assertion_is_an_rs256_jwt_with_googles_claims(tmp_path: Path,
                                                       upstream: Upstream) -> None:
    from llm_router.providers.vertex.token import load_account

    path, key = service_account(tmp_path, upstream.fake, "https://oauth2.example/token")
    jwt = assertion(load_account(str(path)), 1_700_000_000)
    head, claims, signature = jwt.split(".")
    assert orjson.loads(_unb64(head)) == {"alg": "RS256", "typ": "JWT", "kid": "kid-router"}
    assert orjson.loads(_unb64(claims)) == {
        "iss": "router@test-project.iam.gserviceaccount.com", "scope": SCOPE,
        "aud": "https://oauth2.example/token", "iat": 1_700_000_000, "exp": 1_700_003_600}
    key.public_key().verify(_unb64(signature), f"{head}.{claims}".encode(),
                            padding.PKCS1v15(), hashes.SHA256())


async def test_one_token_is_fetched_and_reused(tmp_path: Path, upstream: Upstream) -> None:
    path, _ = service_account(tmp_path, upstream.fake, upstream.root + "/token")
    tokens = TokenCache()
    async with aiohttp.ClientSession() as session:
        first = await tokens.token(session, str(path))
        assert await tokens.token(session, str(path)) == first
    assert first.startswith("ya29.") and upstream.fake.google.token_requests == 1


async def test_concurrent_requests_share_one_refresh(tmp_path: Path,
                                                     upstream: Upstream) -> None:
    path, _ = service_account(tmp_path, upstream.fake, upstream.root + "/token")
    tokens = TokenCache()
    async with aiohttp.ClientSession() as session:
        got = await asyncio.gather(*(tokens.token(session, str(path)) for _ in range(20)))
    assert len(set(got)) == 1 and upstream.fake.google.token_requests == 1


async def test_a_token_is_refreshed_before_it_expires(tmp_path: Path,
                                                      upstream: Upstream) -> None:
    path, _ = service_account(tmp_path, upstream.fake, upstream.root + "/token")
    clock = _Clock()
    tokens = TokenCache(clock=clock)
    async with aiohttp.ClientSession() as session:
        first = await tokens.token(session, str(path))
        clock.now += 3600 - 301  # more than 5 minutes left: the same token
        assert await tokens.token(session, str(path)) == first
        assert upstream.fake.google.token_requests == 1
        clock.now += 2  # under 5 minutes left: still served, a new one fetched meanwhile
        assert await tokens.token(session, str(path)) == first
        assert tokens._entries[str(path)].refreshing is not None
        await tokens._entries[str(path)].refreshing  # type: ignore[misc]
        second = await tokens.token(session, str(path))
    assert second != first and upstream.fake.google.token_requests == 2


async def test_a_forgotten_token_is_fetched_again(tmp_path: Path, upstream: Upstream) -> None:
    path, _ = service_account(tmp_path, upstream.fake, upstream.root + "/token")
    tokens = TokenCache()
    async with aiohttp.ClientSession() as session:
        first = await tokens.token(session, str(path))
        tokens.forget(str(path), "some other token")  # a stale refusal changes nothing
        assert await tokens.token(session, str(path)) == first
        tokens.forget(str(path), first)
        assert await tokens.token(session, str(path)) != first
    assert upstream.fake.google.token_requests == 2


async def test_a_key_the_endpoint_does_not_trust_fails_without_leaking_it(
        tmp_path: Path, upstream: Upstream) -> None:
    path, _ = service_account(tmp_path, upstream.fake, upstream.root + "/token")
    doc = orjson.loads(path.read_bytes())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    from cryptography.hazmat.primitives import serialization
    doc["private_key"] = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    path.write_bytes(orjson.dumps(doc))
    tokens = TokenCache()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TokenError) as caught:
            await tokens.token(session, str(path))
    message = str(caught.value)
    assert "400" in message and "Invalid JWT Signature" in message
    assert "PRIVATE KEY" not in message and str(path) not in message
