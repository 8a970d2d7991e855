"""Service-account key files for tests: a fresh RSA key pair, the JSON file Google would
issue for it, and the public key the fake token endpoint verifies with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from llm_router.testing.upstream import FakeUpstream


def service_account(tmp_path: Path, fake: FakeUpstream, token_uri: str,
                    name: str = "router") -> tuple[Path, Any]:
    """(the key file's path, the private key) of a new service account ``name`` that the
    fake's token endpoint trusts."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    email = f"{name}@test-project.iam.gserviceaccount.com"
    fake.google.trust(email, key.public_key())
    path = tmp_path / f"{name}.json"
    path.write_bytes(orjson.dumps({
        "type": "service_account", "project_id": "test-project",
        "private_key_id": f"kid-{name}", "private_key": pem, "client_email": email,
        "client_id": "1234567890", "token_uri": token_uri}))
    return path, key
