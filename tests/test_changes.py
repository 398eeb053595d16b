"""What counts as a change: content hashes narrowed by ignored and selected JSON paths."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from bts_sync import changes
from bts_sync.fetch import FetchResult


def json_result(body: Any) -> FetchResult:
    raw = json.dumps(body).encode()
    return FetchResult(
        endpoint="api",
        method="GET",
        url="http://127.0.0.1/api",
        started_at=0.0,
        elapsed_ms=1.0,
        status=200,
        body=body,
        is_json=True,
        raw=raw,
        size=len(raw),
    )


QUOTE = {
    "meta": {"generated_at": "2024-06-01T10:00:00Z", "request_id": "a1"},
    "items": [
        {"symbol": "ACME", "price": 10, "updated_at": "10:00"},
        {"symbol": "INIT", "price": 20, "updated_at": "10:00"},
    ],
}


def with_changes(**updates: Any) -> dict[str, Any]:
    """Return a deep copy of QUOTE with ``meta`` keys or the first item's keys replaced."""
    body = json.loads(json.dumps(QUOTE))
    for key, value in updates.items():
        if key in body["meta"]:
            body["meta"][key] = value
        else:
            body["items"][0][key] = value
    return body


def digest(
    body: Any, ignore: tuple[str, ...] = (), select: tuple[str, ...] = ()
) -> str:
    return changes.content_hash(json_result(body), ignore, select)


def test_whole_body_hash_is_canonical_sha256() -> None:
    # Given a JSON result and no paths
    result = json_result(QUOTE)

    # When it is hashed
    # Then the hash is the SHA-256 of the sorted, compact JSON the README documents
    canonical = json.dumps(
        QUOTE, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert (
        changes.content_hash(result) == hashlib.sha256(canonical.encode()).hexdigest()
    )


def test_ignored_path_hides_volatile_field() -> None:
    # Given a body whose timestamp changed
    changed = with_changes(generated_at="2024-06-01T10:00:03Z")

    # When the timestamp is ignored
    ignore = ("$.meta.generated_at",)

    # Then the hash is unchanged
    assert digest(changed, ignore) == digest(QUOTE, ignore)
    # And without the path the hash changes
    assert digest(changed) != digest(QUOTE)


def test_ignored_wildcard_covers_every_item() -> None:
    # Given a body whose item timestamps changed
    changed = json.loads(json.dumps(QUOTE))
    for item in changed["items"]:
        item["updated_at"] = "10:05"

    # When the item timestamps are ignored with a wildcard
    ignore = ("items[*].updated_at",)

    # Then the hash is unchanged
    assert digest(changed, ignore) == digest(QUOTE, ignore)


def test_ignored_paths_still_see_other_fields() -> None:
    # Given a body whose price changed
    changed = with_changes(price=11)

    # When only timestamps are ignored
    ignore = ("$.meta.generated_at", "items[*].updated_at")

    # Then the hash changes
    assert digest(changed, ignore) != digest(QUOTE, ignore)


def test_ignoring_leaves_body_untouched() -> None:
    # Given a body
    body = json.loads(json.dumps(QUOTE))

    # When it is hashed with ignored paths
    digest(body, ("$.meta", "items[*].price"))

    # Then the body is as it was
    assert body == QUOTE


def test_selected_paths_cover_only_their_values() -> None:
    # Given a body whose request id and timestamps changed, but no price
    changed = with_changes(request_id="b2", updated_at="10:09")

    # When only prices are selected
    select = ("items[*].price",)

    # Then the hash is unchanged
    assert digest(changed, select=select) == digest(QUOTE, select=select)
    # And a price change changes it
    assert digest(with_changes(price=12), select=select) != digest(QUOTE, select=select)


def test_selected_value_moving_is_change() -> None:
    # Given a body whose two prices swapped places
    swapped = json.loads(json.dumps(QUOTE))
    swapped["items"][0]["price"], swapped["items"][1]["price"] = 20, 10

    # When only prices are selected
    select = ("items[*].price",)

    # Then the hash changes, because each value is tied to its path
    assert digest(swapped, select=select) != digest(QUOTE, select=select)


def test_ignore_applies_before_select() -> None:
    # Given a body whose item timestamp changed
    changed = with_changes(updated_at="10:07")

    # When items are selected and their timestamps ignored
    select = ("items",)
    ignore = ("items[*].updated_at",)

    # Then the hash is unchanged
    assert digest(changed, ignore, select) == digest(QUOTE, ignore, select)


def test_paths_do_not_apply_to_text() -> None:
    # Given a text body
    result = FetchResult(
        endpoint="api",
        method="GET",
        url="http://127.0.0.1/api",
        started_at=0.0,
        elapsed_ms=1.0,
        status=200,
        body="plain",
        raw=b"plain",
    )

    # When it is hashed with paths
    # Then the bytes are hashed as they are
    assert changes.content_hash(result, ("$.a",), ("$.b",)) == changes.content_hash(
        result
    )


@pytest.mark.parametrize("text", ["items[", "a b", "$.x[?(@.y)]"])
def test_invalid_path_is_rejected(text: str) -> None:
    # Given an invalid expression
    # When it is compiled
    # Then the error message shows an example
    with pytest.raises(changes.PathSyntaxError, match="write it like"):
        changes.compile_path(text)


def test_root_path_is_rejected() -> None:
    # Given the root alone
    # When it is compiled
    # Then the error message requests a member
    with pytest.raises(changes.PathSyntaxError, match="whole body"):
        changes.compile_path("$")
