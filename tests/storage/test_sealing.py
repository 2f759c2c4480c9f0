from __future__ import annotations

import base64

import pytest

from gateway.sealing import Sealer, SealError
from tests.helpers.support import make_settings

KEK_A = b"a" * 32
KEK_B = b"b" * 32


def test_round_trip_and_no_plaintext() -> None:
    sealer = Sealer(KEK_A)
    sealed = sealer.seal("ph_1", "super-secret-token")
    assert "super-secret-token" not in sealed
    assert sealer.open("ph_1", sealed) == "super-secret-token"


def test_each_seal_is_fresh() -> None:
    sealer = Sealer(KEK_A)
    assert sealer.seal("ph_1", "t") != sealer.seal("ph_1", "t")


def test_bound_to_phone() -> None:
    sealer = Sealer(KEK_A)
    sealed = sealer.seal("ph_1", "token")
    with pytest.raises(SealError):
        sealer.open("ph_2", sealed)


def test_wrong_kek_and_tamper() -> None:
    sealed = Sealer(KEK_A).seal("ph_1", "token")
    with pytest.raises(SealError):
        Sealer(KEK_B).open("ph_1", sealed)
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(SealError):
        Sealer(KEK_A).open("ph_1", tampered)
    with pytest.raises(SealError):
        Sealer(KEK_A).open("ph_1", "garbage")


def test_kek_rotation() -> None:
    sealed_old = Sealer(KEK_A).seal("ph_1", "token")
    rotated = Sealer(KEK_B, previous=(KEK_A,))
    assert rotated.open("ph_1", sealed_old) == "token"
    assert rotated.needs_reseal(sealed_old)
    assert not rotated.needs_reseal(rotated.seal("ph_1", "token"))


def test_from_settings_seals_under_the_kek_and_opens_under_previous_ones() -> None:
    old = make_settings("redis://127.0.0.1:6379/0", GATEWAY_KEK=base64.b64encode(KEK_B).decode())
    sealed_before = Sealer.from_settings(old).seal("ph_1", "t")
    rotated = make_settings(
        "redis://127.0.0.1:6379/0",
        GATEWAY_KEK=base64.b64encode(KEK_A).decode(),
        GATEWAY_KEK_PREVIOUS=base64.b64encode(KEK_B).decode(),
    )
    sealer = Sealer.from_settings(rotated)
    assert sealer.current_kek_id == Sealer(KEK_A).current_kek_id
    assert sealer.open("ph_1", sealed_before) == "t"
    assert sealer.needs_reseal(sealed_before)


@pytest.mark.parametrize(
    "field",
    [
        "v1:secret#frag:rest",  # plain text that splits like a sealed value
        "v1:p@ss/wo#rd:x",
        "v1:deadbeefcafe:x",  # hex, but not a key id's length
        "v1:DEADBEEF:x",  # a key id is lowercase
        "secret-token:with:colons",
    ],
)
def test_plain_text_in_a_sealed_field_is_never_echoed(field: str) -> None:
    with pytest.raises(SealError) as caught:
        Sealer(KEK_A).open("ph_1", field)
    message = str(caught.value)
    assert message == "not a sealed value"
    for fragment in field.split(":"):
        assert fragment not in message or fragment == ""


def test_an_unknown_kek_is_named_by_its_id() -> None:
    sealed = Sealer(KEK_B).seal("ph_1", "token")
    with pytest.raises(SealError, match="unknown KEK") as caught:
        Sealer(KEK_A).open("ph_1", sealed)
    assert Sealer(KEK_B).current_kek_id in str(caught.value)  # a key id is no secret: it helps rotation
