"""Signed cart ids, the cookie header and the server secret."""

from __future__ import annotations

import base64
import stat
import string
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.config import ConfigError, Settings
from server.identity import COOKIE_MAX_AGE, CartIds, load_secret, set_cookie_header

SECRET = "unit-test-secret"


@pytest.fixture
def ids() -> CartIds:
    return CartIds(SECRET)


def test_sign_unsign_roundtrip(ids: CartIds) -> None:
    cart_id = str(uuid.uuid4())
    signed = ids.sign(cart_id)
    assert signed != cart_id
    assert signed.startswith(cart_id + ".")
    assert ids.unsign(signed) == cart_id


def test_tampered_value_is_rejected(ids: CartIds) -> None:
    cart_id = str(uuid.uuid4())
    signed = ids.sign(cart_id)
    other = str(uuid.uuid4())
    assert ids.unsign(other + signed[len(cart_id) :]) is None
    # Change the first signature character: it carries 6 full bits (the last one may
    # carry only padding, so changing it could leave the decoded signature intact).
    at = len(cart_id) + 1
    flipped = signed[:at] + ("A" if signed[at] != "A" else "B") + signed[at + 1 :]
    assert ids.unsign(flipped) is None
    assert ids.unsign(signed[:-3]) is None
    assert ids.unsign(cart_id[:-1] + ("0" if cart_id[-1] != "0" else "1") + signed[36:]) is None


def test_only_the_issued_spelling_of_a_signature_is_accepted(ids: CartIds) -> None:
    # A 32-byte signature is 43 base64 characters: the last one's two low bits are
    # padding, which decoding ignores. Changing them spells the same signature anew.
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    for _ in range(20):
        ref = ids.new()
        last = alphabet.index(ref.signed[-1])
        for padding in (1, 2, 3):
            respelled = ref.signed[:-1] + alphabet[last ^ padding]
            assert base64.urlsafe_b64decode(respelled.split(".")[1] + "=") == (
                base64.urlsafe_b64decode(ref.signed.split(".")[1] + "=")
            )
            assert ids.unsign(respelled) is None
            assert ids.resolve(respelled).cart_id != ref.cart_id
        assert ids.unsign(ref.signed) == ref.cart_id


def test_value_signed_with_another_secret_is_rejected(ids: CartIds) -> None:
    cart_id = str(uuid.uuid4())
    assert ids.unsign(CartIds("another-secret").sign(cart_id)) is None


def test_unsigned_plain_uuid_is_rejected(ids: CartIds) -> None:
    assert ids.unsign(str(uuid.uuid4())) is None


@pytest.mark.parametrize("payload", ["not-a-uuid", "12345", "../../etc/passwd", " "])
def test_signed_non_uuid_payload_is_rejected(ids: CartIds, payload: str) -> None:
    assert ids.unsign(ids.sign(payload)) is None


@pytest.mark.parametrize("value", [None, "", "x" * 201])
def test_empty_none_and_overlong_values_are_rejected(ids: CartIds, value: str | None) -> None:
    assert ids.unsign(value) is None


def test_new_issues_a_fresh_signed_uuid4(ids: CartIds) -> None:
    ref = ids.new()
    assert ref.issued is True
    assert uuid.UUID(ref.cart_id).version == 4
    assert ids.unsign(ref.signed) == ref.cart_id
    assert ids.new().cart_id != ref.cart_id


def test_resolve_picks_the_first_valid_candidate(ids: CartIds) -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    signed_first, signed_second = ids.sign(first), ids.sign(second)
    tampered = str(uuid.uuid4()) + signed_first[len(first) :]
    ref = ids.resolve(None, "", tampered, signed_first, signed_second)
    assert ref.cart_id == first
    assert ref.signed == signed_first
    assert ref.issued is False
    assert ids.resolve(signed_second, signed_first).cart_id == second


def test_resolve_issues_a_fresh_cart_when_no_candidate_is_valid(ids: CartIds) -> None:
    plain = str(uuid.uuid4())
    ref = ids.resolve(None, "", plain, CartIds("other").sign(plain))
    assert ref.issued is True
    assert ref.cart_id != plain
    assert ids.unsign(ref.signed) == ref.cart_id
    assert ids.resolve().issued is True


def test_cookie_header_flags_without_secure() -> None:
    header = set_cookie_header("abc.def", secure=False)
    assert header == "cart_id=abc.def; HttpOnly; SameSite=Lax; Path=/; Max-Age=2592000"
    assert "Secure" not in header
    assert COOKIE_MAX_AGE == 2592000


def test_cookie_header_flags_with_secure() -> None:
    header = set_cookie_header("abc.def", secure=True)
    assert header.startswith("cart_id=abc.def;")
    parts = [part.strip() for part in header.split(";")[1:]]
    assert sorted(parts) == sorted(
        ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=2592000", "Secure"]
    )


def test_load_secret_generates_a_0600_file_next_to_the_database(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/cart.db")
    secret = load_secret(settings)
    path = tmp_path / "cart.db.secret"
    assert path.exists()
    assert len(secret) >= 32
    assert path.read_text().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(settings) == secret
    assert path.read_text().strip() == secret


def test_load_secret_generates_distinct_secrets_per_database(tmp_path: Path) -> None:
    a = load_secret(Settings(database_url=f"sqlite:///{tmp_path}/a.db"))
    b = load_secret(Settings(database_url=f"sqlite:///{tmp_path}/b.db"))
    assert a != b


def test_load_secret_prefers_cart_secret(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/cart.db", secret="from-env")
    assert load_secret(settings) == "from-env"
    assert not (tmp_path / "cart.db.secret").exists()


def test_load_secret_from_env_via_settings(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"DATABASE_URL": f"sqlite:///{tmp_path}/cart.db", "CART_SECRET": "s3cret"}
    )
    assert load_secret(settings) == "s3cret"
    assert not (tmp_path / "cart.db.secret").exists()


def test_load_secret_needs_cart_secret_for_a_non_sqlite_database() -> None:
    with pytest.raises(ConfigError, match="CART_SECRET"):
        load_secret(Settings(database_url="postgresql://db/cart"))
    assert load_secret(Settings(database_url="postgresql://db/cart", secret="s")) == "s"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=250))
def test_unsign_never_raises_on_arbitrary_text(value: str) -> None:
    ids = CartIds(SECRET)
    assert ids.unsign(value) is None
    assert ids.unsign(value + "." + value) is None


@given(st.uuids(version=4))
def test_every_uuid4_roundtrips(cart_uuid: uuid.UUID) -> None:
    ids = CartIds(SECRET)
    assert ids.unsign(ids.sign(str(cart_uuid))) == str(cart_uuid)


def test_verified_ids_are_remembered_but_never_a_forgery(
    ids: CartIds, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.identity.VERIFIED_KEPT", 3)
    refs = [ids.new() for _ in range(5)]
    for ref in refs:  # more than are kept: the memory is cleared, not grown
        assert ids.unsign(ref.signed) == ref.cart_id
        assert ids.unsign(ref.signed) == ref.cart_id
        assert len(ids._verified) <= 3
    signed = refs[-1].signed
    at = len(refs[-1].cart_id) + 1 + 20  # a signature character in full bits
    forged = signed[:at] + ("A" if signed[at] != "A" else "B") + signed[at + 1 :]
    assert ids.unsign(forged) is None
    assert CartIds("another secret").unsign(refs[-1].signed) is None
