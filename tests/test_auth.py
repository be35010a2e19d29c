"""User tokens: `<payload>.<signature>`, HMAC-SHA256 over the payload, with an expiry."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from server import errors
from server.auth import MAX_TOKEN, make_user_token, verify_user_token

SECRET = "auth-secret-for-tests"
NOW = 1_800_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(claims: object, secret: str = SECRET) -> str:
    """A token made by hand from the documented format, as a shop in another language would."""
    payload = b64(json.dumps(claims).encode())
    signature = b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{signature}"


def refused(token: str, secret: str = SECRET, now: float = NOW) -> str:
    with pytest.raises(errors.InvalidToken) as info:
        verify_user_token(token, secret, now=now)
    assert info.value.code == "invalid_token" and info.value.status == 401
    return info.value.message


def test_roundtrip_names_the_user() -> None:
    token = make_user_token("user-42", SECRET, ttl=60, now=NOW)
    assert verify_user_token(token, SECRET, now=NOW + 59) == "user-42"


def test_format_is_base64url_json_claims_and_hmac_of_the_payload() -> None:
    token = make_user_token("ünïcode user", SECRET, ttl=60, now=NOW)
    payload, signature = token.split(".")
    assert "=" not in token  # unpadded
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims == {"sub": "ünïcode user", "exp": int(NOW + 60)}
    expected = hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).digest()
    assert signature == b64(expected)
    # A token made by hand to the documented format is accepted.
    hand_made = forge({"sub": "shop-user", "exp": int(NOW) + 10})
    assert verify_user_token(hand_made, SECRET, now=NOW) == "shop-user"


def test_expired_at_exp_and_after() -> None:
    token = make_user_token("u", SECRET, ttl=60, now=NOW)
    assert "expired" in refused(token, now=NOW + 60)
    assert "expired" in refused(token, now=NOW + 3600)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature changed
        lambda t: (
            forge({"sub": "admin", "exp": int(NOW) + 60}).split(".")[0] + "." + t.split(".")[1]
        ),  # payload swapped, old signature
        lambda t: t.split(".")[0] + ".",  # no signature
        lambda t: "." + t.split(".")[1],  # no payload
        lambda t: t.replace(".", ""),  # no separator
        lambda t: t.split(".")[0] + ".sïgnature",  # non-ASCII: a 401, not a crash
        lambda t: "x" * (MAX_TOKEN + 1),
        lambda t: "",
    ],
    ids=[
        "signature",
        "payload",
        "no-signature",
        "no-payload",
        "no-dot",
        "non-ascii",
        "too-long",
        "empty",
    ],
)
def test_tampered_tokens_are_refused(tamper: object) -> None:
    token = make_user_token("u", SECRET, ttl=60, now=NOW)
    assert callable(tamper)
    refused(tamper(token))


def test_another_secret_does_not_verify() -> None:
    token = make_user_token("u", "other-secret", ttl=60, now=NOW)
    assert "signature" in refused(token)


@pytest.mark.parametrize(
    "claims",
    [{"sub": "", "exp": int(NOW) + 60}, {"sub": "u"}, {"sub": 7, "exp": 1}, [1, 2], "text"],
    ids=["empty-sub", "no-exp", "wrong-types", "array", "string"],
)
def test_signed_but_malformed_claims_are_refused(claims: object) -> None:
    assert "payload" in refused(forge(claims))


def test_signed_garbage_payload_is_refused() -> None:
    payload = "!!not-base64!!"
    signature = b64(hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).digest())
    assert "payload" in refused(f"{payload}.{signature}")


def test_no_secret_configured_refuses_every_token() -> None:
    token = make_user_token("u", SECRET, ttl=60, now=NOW)
    assert "not configured" in refused(token, secret="")


def test_make_user_token_reads_the_secret_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CART_AUTH_SECRET", SECRET)
    assert verify_user_token(make_user_token("env-user"), SECRET) == "env-user"
    monkeypatch.delenv("CART_AUTH_SECRET")
    with pytest.raises(ValueError, match="CART_AUTH_SECRET"):
        make_user_token("env-user")


@pytest.mark.parametrize("user_id", ["", "x" * 129], ids=["empty", "129-chars"])
def test_make_user_token_refuses_user_ids_verification_would_refuse(user_id: str) -> None:
    with pytest.raises(ValueError, match="1 to 128"):
        make_user_token(user_id, SECRET)
    assert verify_user_token(make_user_token("x" * 128, SECRET), SECRET) == "x" * 128
