"""Envelope address checks (pure functions)."""

from __future__ import annotations

import pytest

from relay.addresses import AddressError, normalize
from relay.delivery import Backoff


@pytest.mark.parametrize("address", ["a@example.com", "first.last+tag@sub.example.co.uk",
                                     '"quoted local"@example.com', "x@[192.0.2.1]"])
def test_ordinary_addresses_pass_unchanged(address: str) -> None:
    assert normalize(address) == address


def test_an_idn_domain_becomes_punycode() -> None:
    assert normalize("user@bücher.example") == "user@xn--bcher-kva.example"


def test_idn_domains_follow_idna_2008_not_2003() -> None:
    # IDNA 2003 (str.encode("idna")) maps ß to ss and drops joiners: other domains.
    assert normalize("user@faß.de") == "user@xn--fa-hia.de"
    with pytest.raises(AddressError):
        normalize("user@pay\u200dpal.example")


@pytest.mark.parametrize("address", ["a\r\n@example.com", "a@exa\x00mple.com", "a@b\rc.com",
                                     "noatsign", "@example.com", "a@", "a..b@example.com",
                                     "a@-bad-.com", "a@nodot", "a b@example.com",
                                     "x" * 65 + "@example.com"])
def test_malformed_or_injected_addresses_are_refused(address: str) -> None:
    with pytest.raises(AddressError) as e:
        normalize(address)
    assert not e.value.non_ascii


def test_a_non_ascii_local_part_is_refused_as_needing_smtputf8() -> None:
    with pytest.raises(AddressError) as e:
        normalize("jörg@example.com")
    assert e.value.non_ascii


def test_retry_delay_grows_with_age_within_bounds() -> None:
    b = Backoff(minimum=5, maximum=1200, jitter=0.2)
    assert b.delay(0, rng=lambda: 0.0) == 5
    assert b.delay(60, rng=lambda: 0.0) == 60
    assert b.delay(10_000, rng=lambda: 0.0) == 1200
    assert b.delay(60, rng=lambda: 1.0) == pytest.approx(72)
