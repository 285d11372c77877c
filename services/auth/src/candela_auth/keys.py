"""API key generation and hashing.

Keys are 32 random bytes (256 bits) from the OS CSPRNG, URL-safe base64 encoded behind a ``cdl_`` prefix.
Only SHA-256 of a key is stored. A slow password hash (bcrypt, scrypt, argon2) exists to make guessing a
low-entropy secret expensive; a 256-bit random key cannot be guessed however fast the hash is, so a fast
hash loses nothing and keeps Authenticate, which runs on every proxied call, at microseconds.
The digest is looked up by an index and then compared again in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "cdl_"
_VISIBLE_CHARS = 12


def generate_key() -> str:
    """A new API key secret."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> bytes:
    """The digest stored in place of the key."""
    return hashlib.sha256(key.encode()).digest()


def visible_prefix(key: str) -> str:
    """The part of a key shown in listings."""
    return key[:_VISIBLE_CHARS]


def digests_match(stored: bytes, presented: bytes) -> bool:
    """Constant-time comparison of two digests."""
    return hmac.compare_digest(stored, presented)
