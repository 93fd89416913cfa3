"""Ed25519 signatures on caption-cache records (docs/caption-cache.md), for both roles.

Workers sign each record they write with the private key named by CAPTIONER_CACHE_SIGNING_KEY_FILE; API
instances keep a record only when one of the public keys in CAPTIONER_CACHE_VERIFY_KEYS_FILE accepts its
signature. The signature covers the record's key and value, each length-prefixed after a domain label,
so no other pair of bytes (a key cut short, a value moved into the key) signs the same, and nothing
signed for another purpose passes for a cache record. It travels in two headers: the signature and
the id of the key that made it, so an API holding several public keys (a rotation) tries one.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.errors import CaptionerError
from schemas.headers import CACHE_SIGNATURE, CACHE_SIGNATURE_KEY_ID

SIGNATURE_DOMAIN = b"captioner.caption-cache-record.v2\x00"
SIGNING_KEY_FILE = "cache-signing.pem"
VERIFY_KEYS_FILE = "cache-verify.pem"
# A key file holds a few PEM blocks; anything far larger is not one.
MAX_KEY_FILE_BYTES = 1024 * 1024
_KEY_ID = re.compile(rb"[0-9a-f]{16}")
_SIGNATURE = re.compile(rb"[0-9a-f]{128}")
_PUBLIC_PEM = re.compile(rb"-----BEGIN PUBLIC KEY-----\r?\n.*?-----END PUBLIC KEY-----", re.DOTALL)

Headers = Sequence[tuple[str, bytes | str | None]]


class CacheKeyError(CaptionerError):
    """A caption-cache key file that is configured but cannot be used: the process does not start."""

    code = "cache_key_invalid"


def signed_bytes(key: bytes, value: bytes) -> bytes:
    """What a signature covers: the domain label, then the key and the value, each after its length."""
    return b"".join(
        (SIGNATURE_DOMAIN, len(key).to_bytes(4, "big"), key, len(value).to_bytes(4, "big"), value)
    )


def key_id(public_key: Ed25519PublicKey) -> str:
    """16 hex digits of the SHA-256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class CacheSigner:
    def __init__(self, *, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    def headers(self, key: bytes, value: bytes) -> list[tuple[str, bytes]]:
        signature = self._private_key.sign(signed_bytes(key, value))
        return [(CACHE_SIGNATURE, signature.hex().encode()), (CACHE_SIGNATURE_KEY_ID, self.key_id.encode())]


class CacheVerifier:
    def __init__(self, *, public_keys: Iterable[Ed25519PublicKey]) -> None:
        self._keys = {key_id(public_key): public_key for public_key in public_keys}

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def problem(self, key: bytes, value: bytes, headers: Headers | None) -> str | None:
        """None when a known key signed exactly this key and value; else why not: unsigned,
        bad_signature_header (missing half, repeated, malformed), unknown_key or bad_signature."""
        signatures = _values(headers, CACHE_SIGNATURE)
        key_ids = _values(headers, CACHE_SIGNATURE_KEY_ID)
        if not signatures and not key_ids:
            return "unsigned"
        if len(signatures) != 1 or len(key_ids) != 1:
            return "bad_signature_header"
        [signature], [signer] = signatures, key_ids
        if _SIGNATURE.fullmatch(signature) is None or _KEY_ID.fullmatch(signer) is None:
            return "bad_signature_header"
        public_key = self._keys.get(signer.decode())
        if public_key is None:
            return "unknown_key"
        try:
            public_key.verify(bytes.fromhex(signature.decode()), signed_bytes(key, value))
        except InvalidSignature:
            return "bad_signature"
        return None


def _values(headers: Headers | None, name: str) -> list[bytes]:
    """Every value of one header, as bytes (a header without a value counts, as empty)."""
    found = []
    for header, value in headers or ():
        if header == name:
            found.append(value.encode() if isinstance(value, str) else value or b"")
    return found


def load_signer(path: Path) -> CacheSigner:
    """The worker's signing key: one unencrypted PEM Ed25519 private key (`captioner cache keygen`)."""
    data = _read_key_file(path, "CAPTIONER_CACHE_SIGNING_KEY_FILE")
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CacheKeyError(
            f"CAPTIONER_CACHE_SIGNING_KEY_FILE {path} is not an unencrypted PEM private key",
            detail=str(exc),
        ) from None
    if not isinstance(private_key, Ed25519PrivateKey):
        raise CacheKeyError(f"CAPTIONER_CACHE_SIGNING_KEY_FILE {path} is not an Ed25519 key")
    return CacheSigner(private_key=private_key)


def load_verifier(path: Path) -> CacheVerifier:
    """The API's verify keys: one or more PEM Ed25519 public keys in one file (text around them ignored)."""
    data = _read_key_file(path, "CAPTIONER_CACHE_VERIFY_KEYS_FILE")
    blocks = _PUBLIC_PEM.findall(data)
    if not blocks:
        raise CacheKeyError(f"CAPTIONER_CACHE_VERIFY_KEYS_FILE {path} holds no PEM public key")
    public_keys = []
    for number, block in enumerate(blocks, start=1):
        try:
            public_key = serialization.load_pem_public_key(block)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CacheKeyError(
                f"CAPTIONER_CACHE_VERIFY_KEYS_FILE {path}: public key {number} does not load", detail=str(exc)
            ) from None
        if not isinstance(public_key, Ed25519PublicKey):
            raise CacheKeyError(f"CAPTIONER_CACHE_VERIFY_KEYS_FILE {path}: key {number} is not Ed25519")
        public_keys.append(public_key)
    return CacheVerifier(public_keys=public_keys)


def _read_key_file(path: Path, setting: str) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise CacheKeyError(f"{setting} {path} cannot be read: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise CacheKeyError(f"{setting} {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    return data


def write_key_pair(directory: Path) -> tuple[Path, Path]:
    """A new key pair in `directory`: the private key (mode 0600, for workers) and the public key (for API
    instances' verify-keys file). Never replaces a file: an existing key may be in use."""
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path, public_path = directory / SIGNING_KEY_FILE, directory / VERIFY_KEYS_FILE
    for path in (private_path, public_path):
        if path.exists():
            raise CacheKeyError(f"{path} exists; keep it, or write the new pair to another directory")
    _write_new(private_path, private_pem, mode=0o600)
    _write_new(public_path, public_pem, mode=0o644)
    return private_path, public_path


def _write_new(path: Path, data: bytes, *, mode: int) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
