"""The SDK pieces the ad-platform audience adapters share (``platforms/audiences.py``)."""

from __future__ import annotations

import pydantic
import pytest

from dinmo_dagster.platforms.audiences import (
    AudienceTarget,
    IdentifierTable,
    advertising_id,
    check_audience_activation,
)
from dinmo_dagster.platforms.identifiers import IdentifierError, IdentifierSpec


class _ListTarget(AudienceTarget):
    noun = "customer list"
    max_name_length = 10


def _messages(data: dict) -> list[tuple[tuple, str]]:
    with pytest.raises(pydantic.ValidationError) as caught:
        _ListTarget.model_validate(data)
    return [(e["loc"], e["msg"]) for e in caught.value.errors()]


def test_a_target_subclass_words_its_messages_with_its_noun_and_limit() -> None:
    assert _ListTarget.model_validate({"id": 42}).id == "42"
    assert _messages({"name": " "}) == [(("name",), "Value error, is empty; allowed: the customer list's name")]
    assert _messages({"name": "x" * 11}) == [(("name",), "Value error, has 11 characters; allowed: at most 10")]
    assert _messages({"id": "l-1"}) == [(("id",), "Value error, found 'l-1'; allowed: the customer list's numeric id")]
    assert _messages({"name": "a", "id": "1"}) == [
        ((), "Value error, found both name and id; allowed: {name: ...} or {id: ...}")
    ]
    assert _messages({}) == [((), "Value error, found neither name nor id; allowed: {name: ...} or {id: ...}")]


def test_the_activation_check_lists_every_problem() -> None:
    spec = IdentifierSpec("email", hashed=True, optional=True)
    table = IdentifierTable({"email": ("EMAIL_SHA256", spec), "email_hash": ("EMAIL_SHA256", spec)},
                            aliases={"mail": "email"})  # fmt: skip
    problems = check_audience_activation(
        {"Mail": "c1", "email_hash": "c2", "fax": "c3"}, {"c4": "x"}, kind_of=table.kind_of,
        allowed=", ".join(table), takes="Example lists", has_audience=False,
    )  # fmt: skip
    assert problems == [
        "identifiers.email_hash: Mail already sends EMAIL_SHA256; keep one of them",
        "identifiers.fax: found 'fax'; allowed: email, email_hash",
        "mapping: found c4; allowed: nothing (Example lists take identifiers only)",
        "audience: found nothing; allowed: {name: ...} or {id: ...}",
    ]
    assert table.by_kind({"MAIL": "d1"}) == {"EMAIL_SHA256": "d1"}


def test_an_advertising_id_is_a_uuid_and_the_message_never_holds_the_value() -> None:
    assert advertising_id(" 6D92078A-8246-4BA4-AE5B-76104861E7DC ") == "6D92078A-8246-4BA4-AE5B-76104861E7DC"
    with pytest.raises(IdentifierError) as caught:
        advertising_id("secret-value", "an Apple IDFA")
    assert str(caught.value) == "not an Apple IDFA"
