"""The Bedrock SigV4 signer, byte for byte against botocore's ``SigV4Auth``.

botocore is a test dependency only (the ``test`` extra): it is the reference, the
router's own signer is what ships.
"""

from __future__ import annotations

from datetime import UTC, datetime
from unittest.mock import patch

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from llm_router.providers.bedrock.sigv4 import Credentials, canonical_uri, sign_headers

NOW = datetime(2026, 12, 4, 17, 5, 9, tzinfo=UTC)
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+token=="

CASES = [
    pytest.param("us-east-1", "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse",
                 b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}', "",
                 "bedrock-runtime.us-east-1.amazonaws.com", id="inference-profile"),
    pytest.param("eu-west-3", "/model/mistral.mistral-large-2402-v1%3A0/converse-stream",
                 b"{}", TOKEN, "bedrock-runtime.eu-west-3.amazonaws.com",
                 id="session-token"),
    pytest.param("us-west-2",
                 "/model/arn%3Aaws%3Abedrock%3Aus-west-2%3A123456789012%3Ainference-profile"
                 "%2Fus.meta.llama3-3-70b-instruct-v1%3A0/converse",
                 "{\"messages\": \"caf\u00e9 \u2603\"}".encode(), "",
                 "bedrock-runtime.us-west-2.amazonaws.com", id="arn-model-id"),
    pytest.param("us-east-1", "/model/amazon.nova-lite-v1%3A0/converse", b"", TOKEN,
                 "127.0.0.1:8123", id="loopback-port-empty-body"),
]


@pytest.mark.parametrize(("region", "path", "body", "token", "host"), CASES)
def test_authorization_is_byte_identical_to_botocore(region: str, path: str, body: bytes,
                                                     token: str, host: str) -> None:
    scheme = "http" if host.startswith("127.") else "https"
    ours = sign_headers(method="POST", host=host, path=path, body=body,
                        content_type="application/json",
                        credentials=Credentials("AKIDEXAMPLE", SECRET, token),
                        region=region, service="bedrock", now=NOW)

    request = AWSRequest(method="POST", url=f"{scheme}://{host}{path}", data=body,
                         headers={"Content-Type": "application/json"})
    with patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        SigV4Auth(BotoCredentials("AKIDEXAMPLE", SECRET, token or None), "bedrock",
                  region).add_auth(request)

    assert ours["Authorization"] == request.headers["Authorization"]
    assert ours["X-Amz-Date"] == request.headers["X-Amz-Date"]
    if token:
        assert ours["X-Amz-Security-Token"] == request.headers["X-Amz-Security-Token"] == token
    else:
        assert "X-Amz-Security-Token" not in ours
        assert "X-Amz-Security-Token" not in request.headers


def test_a_get_without_a_body_signs_like_botocore() -> None:
    # The model list: GET /foundation-models on the control-plane host, no content-type.
    host = "bedrock.us-east-1.amazonaws.com"
    ours = sign_headers(method="GET", host=host, path="/foundation-models", body=b"",
                        content_type="", credentials=Credentials("AKIDEXAMPLE", SECRET, TOKEN),
                        region="us-east-1", service="bedrock", now=NOW)
    request = AWSRequest(method="GET", url=f"https://{host}/foundation-models")
    with patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        SigV4Auth(BotoCredentials("AKIDEXAMPLE", SECRET, TOKEN), "bedrock",
                  "us-east-1").add_auth(request)
    assert ours["Authorization"] == request.headers["Authorization"]
    assert "SignedHeaders=host;x-amz-date;x-amz-security-token," in ours["Authorization"]


def test_a_session_token_is_signed() -> None:
    signed = sign_headers(method="POST", host="h", path="/model/m/converse", body=b"{}",
                          content_type="application/json",
                          credentials=Credentials("AKID", SECRET, TOKEN), region="us-east-1",
                          service="bedrock", now=NOW)
    assert "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token," in \
        signed["Authorization"]


def test_the_canonical_path_is_encoded_twice() -> None:
    # The wire path carries %3A; AWS signs its encoding again, so a signer that does not
    # gets 403 SignatureDoesNotMatch for every versioned model id.
    assert canonical_uri("/model/us.amazon.nova-pro-v1%3A0/converse") == \
        "/model/us.amazon.nova-pro-v1%253A0/converse"
    assert canonical_uri("/model/arn%3Aaws%2Fx/converse") == "/model/arn%253Aaws%252Fx/converse"


def test_the_secret_never_shows_in_the_credentials_repr() -> None:
    creds = Credentials("AKIDEXAMPLE", SECRET, TOKEN)
    assert SECRET not in repr(creds)
    assert TOKEN not in repr(creds)
