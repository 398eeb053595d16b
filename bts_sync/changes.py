"""Content hashes of responses, narrowed by JSONPath, which decide what counts as a change.

By default the hash covers the whole body. An endpoint's ``ignore_paths``
remove values from a copy of the body before hashing (timestamps, request ids),
and its ``select_paths`` then make the hash cover only the values they match.
Both use JSONPath as parsed by jsonpath-ng: ``$.meta.generated_at``,
``items[*].updated_at``, ``$..etag``. A path that matches nothing is not an
error, because APIs leave out empty members.

JSON bodies are hashed in canonical form (sorted keys, no spaces), so a server
that reorders keys does not produce a change. Paths do not apply to other
bodies, which are hashed as bytes.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bts_sync.errors import BtsSyncError

if TYPE_CHECKING:
    from jsonpath_ng.jsonpath import JSONPath

    from bts_sync.fetch import FetchResult


class PathSyntaxError(BtsSyncError):
    """A JSONPath expression in the configuration could not be parsed."""


@functools.lru_cache(maxsize=1024)
def compile_path(text: str) -> JSONPath:
    """Parse a JSONPath expression once and cache it.

    Raises:
        PathSyntaxError: The expression is invalid, or it is the root ``$``
            alone, which would name the whole body.
    """
    from jsonpath_ng.exceptions import JSONPathError
    from jsonpath_ng.jsonpath import Root
    from jsonpath_ng.parser import parse

    try:
        path = parse(text)
    except JSONPathError as exc:
        raise PathSyntaxError(
            f"is not a valid JSONPath expression ({exc}); write it like $.meta.generated_at or items[*].updated_at."
        ) from None
    if isinstance(path, Root):
        raise PathSyntaxError(
            "names the whole body; name a member instead, like $.meta.generated_at."
        )
    return path


def canonical_json(value: Any) -> bytes:
    """Encode a JSON value with sorted keys and no spaces, so equal values give equal bytes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def relevant_content(
    body: Any, ignore_paths: Sequence[str] = (), select_paths: Sequence[str] = ()
) -> Any:
    """Return the part of a decoded JSON body that the content hash covers.

    Ignored paths are removed first, from a copy, so ``body`` is left as it
    is. With select paths the result is a list of ``[path, value]`` pairs, one
    per match in the order of the paths, so the same value moving to another
    path counts as a change.
    """
    content = body
    if ignore_paths:
        content = copy.deepcopy(body)
        for text in ignore_paths:
            content = compile_path(text).filter(lambda _value: True, content)
    if not select_paths:
        return content
    return [
        [str(match.full_path), match.value]
        for text in select_paths
        for match in compile_path(text).find(content)
    ]


def content_hash(
    result: FetchResult,
    ignore_paths: Sequence[str] = (),
    select_paths: Sequence[str] = (),
) -> str:
    """Return the SHA-256 hex digest of what counts as the content of a response."""
    if not result.is_json:
        return hashlib.sha256(result.raw).hexdigest()
    content = relevant_content(result.body, ignore_paths, select_paths)
    return hashlib.sha256(canonical_json(content)).hexdigest()
