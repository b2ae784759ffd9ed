"""Signed payloads: a store others can write to must not be able to make workers run code.

Jobs and outcomes are pickles, and unpickling runs code. With a secret
(``secret=`` or ``TASKQ_SECRET``), every payload a broker stores is signed with
HMAC-SHA256 over the job id and the payload bytes, and the signature is checked
before anything is unpickled: a payload that fails is never unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import os

SECRET_ENV = "TASKQ_SECRET"


class Signer:
    """Signs and checks payloads with one secret (or does nothing without one)."""

    def __init__(self, secret: str | bytes | None):
        if secret is None:
            secret = os.environ.get(SECRET_ENV) or None
        if isinstance(secret, str):
            secret = secret.encode()
        if secret is not None and len(secret) < 16:
            raise ValueError("the signing secret must have at least 16 bytes")
        self._key = secret

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def sign(self, job_id: str, *parts: bytes) -> str:
        """The signature of ``parts`` for ``job_id`` ("" without a secret)."""
        if self._key is None:
            return ""
        mac = hmac.new(self._key, job_id.encode(), hashlib.sha256)
        for part in parts:
            mac.update(len(part).to_bytes(8, "big"))  # no two splits of the bytes sign alike
            mac.update(part)
        return mac.hexdigest()

    def check(self, job_id: str, signature: str, *parts: bytes) -> str | None:
        """None if the payload may be unpickled here; else why not."""
        if self._key is None:
            return None
        if not signature:
            return "it is not signed, and this process requires signed payloads (a secret is set)"
        if not hmac.compare_digest(signature, self.sign(job_id, *parts)):
            return "its signature does not match (tampered with, or signed with another secret)"
        return None
