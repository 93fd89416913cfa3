"""Signatures on caption-cache records: only exactly the key and value a known key signed pass."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.cache_signing import (
    SIGNATURE_DOMAIN,
    CacheKeyError,
    CacheSigner,
    CacheVerifier,
    Headers,
    load_signer,
    load_verifier,
    signed_bytes,
    write_key_pair,
)
from schemas.headers import CACHE_SIGNATURE, CACHE_SIGNATURE_KEY_ID

KEY, VALUE = b"v2:shared:key", b"\xc3\x01value"


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def verifier_of(*keys: Ed25519PrivateKey) -> CacheVerifier:
    return CacheVerifier(public_keys=[key.public_key() for key in keys])


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_a_signature_over_the_key_and_value_passes() -> None:
    key = new_key()
    headers = CacheSigner(private_key=key).headers(KEY, VALUE)
    assert verifier_of(key).problem(KEY, VALUE, headers) is None


def test_what_is_signed_is_domain_separated_and_length_prefixed() -> None:
    assert signed_bytes(KEY, VALUE).startswith(SIGNATURE_DOMAIN)
    # The same bytes split another way between key and value sign differently.
    assert signed_bytes(b"ab", b"c") != signed_bytes(b"a", b"bc")
    key = new_key()
    headers = CacheSigner(private_key=key).headers(b"ab", b"c")
    assert verifier_of(key).problem(b"a", b"bc", headers) == "bad_signature"


def test_a_signature_over_another_key_or_value_fails() -> None:
    key = new_key()
    headers = CacheSigner(private_key=key).headers(KEY, VALUE)
    assert verifier_of(key).problem(b"v2:shared:other", VALUE, headers) == "bad_signature"
    assert verifier_of(key).problem(KEY, VALUE + b"!", headers) == "bad_signature"


def test_unsigned_and_other_keys_records_fail() -> None:
    ours, theirs = new_key(), new_key()
    assert verifier_of(ours).problem(KEY, VALUE, None) == "unsigned"
    assert verifier_of(ours).problem(KEY, VALUE, [("traceparent", b"x")]) == "unsigned"
    forged = CacheSigner(private_key=theirs).headers(KEY, VALUE)
    assert verifier_of(ours).problem(KEY, VALUE, forged) == "unknown_key"
    # Their signature under our key's id.
    claimed = [forged[0], (CACHE_SIGNATURE_KEY_ID, CacheSigner(private_key=ours).key_id.encode())]
    assert verifier_of(ours).problem(KEY, VALUE, claimed) == "bad_signature"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda sig, kid: [(CACHE_SIGNATURE, sig)],  # no key id
        lambda sig, kid: [(CACHE_SIGNATURE_KEY_ID, kid)],  # no signature
        lambda sig, kid: [(CACHE_SIGNATURE, sig), (CACHE_SIGNATURE, sig), (CACHE_SIGNATURE_KEY_ID, kid)],
        lambda sig, kid: [(CACHE_SIGNATURE, sig[:-2]), (CACHE_SIGNATURE_KEY_ID, kid)],
        lambda sig, kid: [(CACHE_SIGNATURE, sig.upper()), (CACHE_SIGNATURE_KEY_ID, kid)],
        lambda sig, kid: [(CACHE_SIGNATURE, b"zz" * 64), (CACHE_SIGNATURE_KEY_ID, kid)],
        lambda sig, kid: [(CACHE_SIGNATURE, bytes.fromhex(sig.decode())), (CACHE_SIGNATURE_KEY_ID, kid)],
        lambda sig, kid: [(CACHE_SIGNATURE, None), (CACHE_SIGNATURE_KEY_ID, kid)],
        lambda sig, kid: [(CACHE_SIGNATURE, sig), (CACHE_SIGNATURE_KEY_ID, kid + b"0")],
        lambda sig, kid: [(CACHE_SIGNATURE, sig), (CACHE_SIGNATURE_KEY_ID, b"\xff" * 16)],
    ],
)
def test_a_malformed_signature_header_fails(mangle: Callable[[bytes, bytes], Headers]) -> None:
    key = new_key()
    [(_, signature), (_, key_id)] = CacheSigner(private_key=key).headers(KEY, VALUE)
    assert verifier_of(key).problem(KEY, VALUE, mangle(signature, key_id)) == "bad_signature_header"


def test_two_verify_keys_accept_either_signer(tmp_path: Path) -> None:
    """A rotation: API instances trust the old and the new key while workers move to the new one."""
    old, new, other = new_key(), new_key(), new_key()
    path = tmp_path / "verify.pem"
    path.write_bytes(b"# old, retire after the rollout\n" + public_pem(old) + b"\n# new\n" + public_pem(new))
    verifier = load_verifier(path)
    assert len(verifier.key_ids) == 2
    for signer in (old, new):
        assert verifier.problem(KEY, VALUE, CacheSigner(private_key=signer).headers(KEY, VALUE)) is None
    other_headers = CacheSigner(private_key=other).headers(KEY, VALUE)
    assert verifier.problem(KEY, VALUE, other_headers) == "unknown_key"


def test_keygen_writes_a_pair_that_loads_and_never_overwrites(tmp_path: Path) -> None:
    private_path, public_path = write_key_pair(tmp_path / "keys")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    signer, verifier = load_signer(private_path), load_verifier(public_path)
    assert verifier.key_ids == [signer.key_id]
    assert verifier.problem(KEY, VALUE, signer.headers(KEY, VALUE)) is None
    before = private_path.read_bytes()
    with pytest.raises(CacheKeyError, match="exists"):
        write_key_pair(tmp_path / "keys")
    assert private_path.read_bytes() == before


def test_unusable_key_files_are_refused(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    files = {
        "empty.pem": b"",
        "garbage.pem": b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n",
        "ec-public.pem": ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "ec-private.pem": ec_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "huge.pem": b"#" * (2 * 1024 * 1024),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for name in ("empty.pem", "garbage.pem", "ec-public.pem", "huge.pem", "missing.pem"):
        with pytest.raises(CacheKeyError, match="CAPTIONER_CACHE_VERIFY_KEYS_FILE"):
            load_verifier(tmp_path / name)
    for name in ("empty.pem", "ec-private.pem", "ec-public.pem", "huge.pem", "missing.pem"):
        with pytest.raises(CacheKeyError, match="CAPTIONER_CACHE_SIGNING_KEY_FILE"):
            load_signer(tmp_path / name)
