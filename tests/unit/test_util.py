"""APIKeyFactory: issue, get, reissue, revoke, update, and storage hooks."""

from __future__ import annotations

import re
from typing import Any

import pytest

from asyncapy.util import KEY_ALPHABET, APIKeyFactory

URL_SAFE = re.compile(r"[A-Za-z0-9_-]+\Z")


def test_default_size_is_32() -> None:
    factory = APIKeyFactory()
    assert factory.size == 32
    assert len(factory.issue()) == 32


@pytest.mark.parametrize("size", [8, 9, 10, 11, 16, 31, 33, 64, 100])
def test_keys_have_exactly_size_url_safe_characters(size: int) -> None:
    factory = APIKeyFactory(size)
    for _ in range(20):
        key = factory.issue()
        assert len(key) == size
        assert URL_SAFE.match(key)


def test_alphabet_is_url_safe_base64() -> None:
    assert len(KEY_ALPHABET) == 64
    assert URL_SAFE.match(KEY_ALPHABET)


def test_keys_are_distinct() -> None:
    factory = APIKeyFactory(8)
    keys = {factory.issue() for _ in range(500)}
    assert len(keys) == 500


@pytest.mark.parametrize("size", [7, 0, -1])
def test_size_below_8_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="at least 8"):
        APIKeyFactory(size)


@pytest.mark.parametrize("size", [32.0, "32", None, True])
def test_non_int_size_is_refused(size: Any) -> None:
    with pytest.raises(ValueError, match="int"):
        APIKeyFactory(size)


def test_metadata_defaults_to_an_empty_dict() -> None:
    factory = APIKeyFactory()
    key = factory.issue()
    assert factory.get(key) == {}
    other = factory.issue()
    factory.get(key)["x"] = 1
    assert factory.get(other) == {}  # not a shared default


def test_get_returns_the_stored_metadata_dict() -> None:
    factory = APIKeyFactory()
    metadata = {"user": "alice", "plan": "free"}
    key = factory.issue(metadata)
    assert factory.get(key) is metadata


def test_get_unknown_key_raises_key_error() -> None:
    factory = APIKeyFactory()
    with pytest.raises(KeyError):
        factory.get("x" * 32)
    with pytest.raises(KeyError):
        factory.get("")


def test_reissue_keeps_metadata_and_retires_the_old_key() -> None:
    factory = APIKeyFactory()
    metadata = {"user": "bob"}
    old = factory.issue(metadata)
    new = factory.reissue(old)
    assert new != old
    assert len(new) == 32
    assert factory.get(new) is metadata
    with pytest.raises(KeyError):
        factory.get(old)
    with pytest.raises(KeyError):
        factory.reissue(old)


def test_revoke() -> None:
    factory = APIKeyFactory()
    key = factory.issue({"a": 1})
    keep = factory.issue({"b": 2})
    factory.revoke(key)
    with pytest.raises(KeyError):
        factory.get(key)
    with pytest.raises(KeyError):
        factory.revoke(key)
    assert factory.get(keep) == {"b": 2}


def test_update_replaces_metadata() -> None:
    factory = APIKeyFactory()
    key = factory.issue({"a": 1})
    factory.update(key, {"b": 2})
    assert factory.get(key) == {"b": 2}


def test_update_unknown_key_raises_key_error_and_stores_nothing() -> None:
    factory = APIKeyFactory()
    with pytest.raises(KeyError):
        factory.update("y" * 32, {"a": 1})
    assert "y" * 32 not in factory


def test_metadata_must_be_a_dict() -> None:
    factory = APIKeyFactory()
    with pytest.raises(TypeError):
        factory.issue([("a", 1)])  # type: ignore[arg-type]
    key = factory.issue()
    with pytest.raises(TypeError):
        factory.update(key, None)  # type: ignore[arg-type]
    assert factory.get(key) == {}


def test_contains() -> None:
    factory = APIKeyFactory()
    key = factory.issue()
    assert key in factory
    assert "z" * 32 not in factory
    assert 3 not in factory
    factory.revoke(key)
    assert key not in factory


def test_repr_does_not_show_keys() -> None:
    factory = APIKeyFactory(16)
    key = factory.issue()
    assert repr(factory) == "APIKeyFactory(size=16)"
    assert key not in repr(factory)


class DictBacked(APIKeyFactory):
    """Storage in an external dict through the hooks, recording calls."""

    def __init__(self, size: int = 32) -> None:
        super().__init__(size)
        self.store: dict[str, dict[Any, Any]] = {}
        self.log: list[str] = []

    def _load(self, key: str) -> dict[Any, Any]:
        self.log.append("load")
        return self.store[key]

    def _save(self, key: str, metadata: dict[Any, Any]) -> None:
        self.log.append("save")
        self.store[key] = metadata

    def _delete(self, key: str) -> None:
        self.log.append("delete")
        del self.store[key]

    def _contains(self, key: str) -> bool:
        return key in self.store


def test_subclass_storage_hooks_are_used() -> None:
    factory = DictBacked()
    key = factory.issue({"a": 1})
    assert factory.store == {key: {"a": 1}}
    new = factory.reissue(key)
    assert factory.store == {new: {"a": 1}}
    assert factory.log == ["save", "load", "save", "delete"]
    factory.update(new, {"b": 2})
    assert factory.get(new) == {"b": 2}
    factory.revoke(new)
    assert factory.store == {}
    assert not factory._keys  # the in-memory store was never used


def test_key_collisions_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    factory = APIKeyFactory(8)
    picks = iter("a" * 8 + "a" * 8 + "b" * 8)
    monkeypatch.setattr("asyncapy.util.secrets.choice", lambda alphabet: next(picks))
    assert factory.issue() == "a" * 8
    assert factory.issue() == "b" * 8
