"""The code a person types, credentials and sealing: pure functions."""

from __future__ import annotations

import re
import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scanner_auth_shared import crypto
from scanner_auth_shared.crypto import (
    ALPHABET,
    CodeTypo,
    MalformedCode,
    SealBroken,
    SecretBox,
    luhn32_check_symbol,
    normalise_code,
)

pytestmark = pytest.mark.unit
SHAPE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$")


def test_the_contracts_examples():
    assert normalise_code("YD20-66YF-H255") == "YD2066YFH255"
    with pytest.raises(CodeTypo):
        normalise_code("YD20-66YF-H256")


def test_generated_codes_have_the_shape_and_a_valid_check_symbol():
    for _ in range(2000):
        code = crypto.generate_code()
        assert SHAPE.match(code), code
        assert normalise_code(code) == code.replace("-", "")


def test_generated_codes_do_not_repeat():
    assert len({crypto.generate_code() for _ in range(20000)}) == 20000


def test_entry_is_forgiving():
    assert normalise_code("yd20 66yf h255") == "YD2066YFH255"
    assert normalise_code("  YD20-66YF-H255\t") == "YD2066YFH255"
    # O reads as 0, I and L as 1
    body = "1D0066YFH25"
    code = body + luhn32_check_symbol(body)
    assert normalise_code(code.replace("0", "O").replace("1", "I")) == code
    assert normalise_code(code.replace("1", "l")) == code


@pytest.mark.parametrize(
    "typed", ["", "YD20-66YF-H25", "YD20-66YF-H2555", "YD20-66YF-H25U", "ÄD20-66YF-H255"]
)
def test_malformed_entries(typed):
    with pytest.raises(MalformedCode):
        normalise_code(typed)


@given(
    st.text(alphabet=ALPHABET, min_size=11, max_size=11),
    st.integers(0, 10),
    st.sampled_from(ALPHABET),
)
def test_every_single_symbol_substitution_is_caught(body, position, replacement):
    code = body + luhn32_check_symbol(body)
    typo = code[:position] + replacement + code[position + 1 :]
    if typo != code:
        with pytest.raises(CodeTypo):
            normalise_code(typo)


@given(st.text(alphabet=ALPHABET, min_size=11, max_size=11), st.integers(0, 10))
def test_adjacent_transpositions_are_caught_except_0_and_z(body, position):
    # Luhn mod N misses exactly one transposition: the first and last symbols of the
    # alphabet (0 and Z), as decimal Luhn misses 09 <-> 90. The contract prescribes it.
    code = body + luhn32_check_symbol(body)
    pair = {code[position], code[position + 1]}
    swapped = code[:position] + code[position + 1] + code[position] + code[position + 2 :]
    if swapped != code and pair != {"0", "Z"}:
        with pytest.raises(CodeTypo):
            normalise_code(swapped)


def test_code_digest_is_keyed():
    assert crypto.code_digest(b"k" * 32, "YD2066YFH255") != crypto.code_digest(
        b"j" * 32, "YD2066YFH255"
    )
    assert re.fullmatch(r"[0-9a-f]{64}", crypto.code_digest(b"k" * 32, "YD2066YFH255"))


def test_credentials_carry_256_random_bits_and_only_their_digest_is_kept():
    a, b = crypto.generate_credential(), crypto.generate_credential()
    assert a != b and a.startswith("sac1_")
    assert len(a) - len("sac1_") >= 43  # 32 bytes in base64url
    assert re.fullmatch(r"[0-9a-f]{64}", crypto.credential_digest(a))
    assert crypto.looks_like_credential(a)


def test_sealing_round_trip_is_bound_to_key_and_context():
    box = SecretBox(secrets.token_bytes(32))
    sealed = box.seal("YD20-66YF-H255", crypto.sealed_code_context("t1"))
    assert "YD20" not in sealed
    assert box.open(sealed, crypto.sealed_code_context("t1")) == "YD20-66YF-H255"
    with pytest.raises(SealBroken):
        box.open(sealed, crypto.sealed_code_context("t2"))
    with pytest.raises(SealBroken):
        SecretBox(secrets.token_bytes(32)).open(sealed, crypto.sealed_code_context("t1"))
    with pytest.raises(SealBroken):
        box.open(
            sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1],
            crypto.sealed_code_context("t1"),
        )
    raw = box.seal_bytes("x", "c")
    assert box.open_bytes(raw, "c") == "x"
