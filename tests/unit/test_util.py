"""APIKeyFactory: issue, get, reissue, revoke, update, and storage hooks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from typing import Any

import pytest

from asyncapy.util import KEY_ALPHABET, MIN_SECRET, APIKeyFactory, checksum

KEY_SHAPE = re.compile(r"aapy_[0-9A-Za-z]+\Z")


def test_default_size_is_32() -> None:
    factory = APIKeyFactory()
    assert factory.size == 32
    key = factory.issue()
    assert len(key) == 32
    assert KEY_SHAPE.match(key)


# The smallest size: "aapy_" + 16 random + 6 checksum characters.
SMALLEST = 5 + MIN_SECRET + 6


@pytest.mark.parametrize("size", [SMALLEST, SMALLEST + 1, 32, 33, 64, 100])
def test_keys_have_exactly_size_characters_and_a_valid_checksum(size: int) -> None:
    factory = APIKeyFactory(size)
    for _ in range(20):
        key = factory.issue()
        assert len(key) == size
        assert KEY_SHAPE.match(key)
        assert checksum(key[:-6]) == key[-6:]
        assert factory.well_formed(key)


def test_alphabet_is_base62() -> None:
    assert len(KEY_ALPHABET) == len(set(KEY_ALPHABET)) == 62
    assert KEY_ALPHABET.isalnum()


def test_keys_are_distinct() -> None:
    factory = APIKeyFactory(SMALLEST)
    keys = {factory.issue() for _ in range(500)}
    assert len(keys) == 500


@pytest.mark.parametrize("size", [SMALLEST - 1, 8, 0, -1])
def test_size_below_the_smallest_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match=f"at least {SMALLEST}"):
        APIKeyFactory(size)


def test_the_smallest_size_follows_the_prefix() -> None:
    assert len(APIKeyFactory(MIN_SECRET + 6, prefix="").issue()) == MIN_SECRET + 6
    with pytest.raises(ValueError, match=f"at least {MIN_SECRET + 6}"):
        APIKeyFactory(MIN_SECRET + 5, prefix="")
    key = APIKeyFactory(40, prefix="acme2").issue()
    assert key.startswith("acme2_")
    for bad in ("a_b", "ü", "x y", 3):
        with pytest.raises(ValueError, match="prefix"):
            APIKeyFactory(prefix=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [32.0, "32", None, True])
def test_non_int_size_is_refused(size: Any) -> None:
    with pytest.raises(ValueError, match="int"):
        APIKeyFactory(size)


def test_garbage_is_refused_without_a_store_lookup() -> None:
    factory = CountingFactory()
    key = factory.issue()
    factory.lookups = 0
    flipped = key[:-1] + ("0" if key[-1] != "0" else "1")  # checksum no longer matches
    typo = key[:10] + ("a" if key[10] != "a" else "b") + key[11:]
    for garbage in (
        flipped,
        typo,
        key[:-1],
        key + "x",
        "x" * 32,
        "",
        "bbbb_" + key[5:],
        key.upper(),
    ):
        if garbage == key:
            continue
        assert not factory.well_formed(garbage)
        with pytest.raises(KeyError):
            factory.get(garbage)
        assert garbage not in factory
    assert factory.lookups == 0
    assert factory.get(key) == {}
    assert factory.lookups == 1


class CountingFactory(APIKeyFactory):
    """Counts the store's lookups (through the public store, not the hooks)."""

    lookups = 0

    def __init__(self) -> None:
        super().__init__()
        get = self.backend.keys.get

        def counted(digest: str) -> Any:
            self.lookups += 1
            return get(digest)

        self.backend.keys.get = counted  # type: ignore[method-assign]


def test_the_store_holds_digests_never_keys() -> None:
    factory = APIKeyFactory()
    key = factory.issue({"user": "ann"})
    (record,) = factory.backend.keys.records()
    assert record.digest == hashlib.sha256(key.encode()).hexdigest()
    assert key not in repr(record)
    assert record.hint == f"aapy_...{key[-4:]}"
    assert record.metadata == {"user": "ann"}


def test_a_pepper_makes_the_digest_an_hmac() -> None:
    factory = APIKeyFactory(pepper="s3cret")
    key = factory.issue()
    (record,) = factory.backend.keys.records()
    assert record.digest == hmac.new(b"s3cret", key.encode(), hashlib.sha256).hexdigest()
    assert factory.get(key) == {}
    other = APIKeyFactory(store=factory.backend, pepper=b"other")
    assert key not in other


def test_legacy_keys_are_imported_and_accepted_only_with_legacy() -> None:
    strict = APIKeyFactory()
    with pytest.raises(ValueError, match="legacy"):
        strict.import_key("old-style-key-1234567890", {"a": 1})
    factory = APIKeyFactory(legacy=True, store=strict.backend)
    factory.import_key("old-style-key-1234567890", {"a": 1})
    assert factory.get("old-style-key-1234567890") == {"a": 1}
    assert "old-style-key-1234567890" not in strict  # refused by format, never looked up
    with pytest.raises(ValueError, match="already"):
        factory.import_key("old-style-key-1234567890")


def test_metadata_defaults_to_an_empty_dict() -> None:
    factory = APIKeyFactory()
    key = factory.issue()
    assert factory.get(key) == {}
    other = factory.issue()
    factory.get(key)["x"] = 1
    assert factory.get(other) == {}  # not a shared default


def test_get_returns_a_copy_of_the_stored_metadata() -> None:
    factory = APIKeyFactory()
    metadata = {"user": "alice", "plan": "free"}
    key = factory.issue(metadata)
    assert factory.get(key) == metadata
    factory.get(key)["user"] = "mallory"
    metadata["plan"] = "paid"
    assert factory.get(key) == {"user": "alice", "plan": "free"}


def test_metadata_must_be_json() -> None:
    factory = APIKeyFactory()
    with pytest.raises(TypeError, match="JSON"):
        factory.issue({"when": {1, 2}})
    assert factory.backend.keys.records() == []


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
    assert factory.get(new) == metadata
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
    factory = APIKeyFactory(40)
    key = factory.issue()
    assert repr(factory) == "APIKeyFactory(size=40)"
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


def test_subclass_storage_hooks_are_used_with_digests() -> None:
    factory = DictBacked()
    key = factory.issue({"a": 1})
    assert factory.store == {sha(key): {"a": 1}}
    metadata = factory.get(key)
    assert metadata == {"a": 1}
    new = factory.reissue(key)
    assert factory.store == {sha(new): {"a": 1}}
    assert factory.log == ["save", "load", "load", "save", "delete"]
    factory.update(new, {"b": 2})
    assert factory.get(new) == {"b": 2}
    assert new in factory
    assert key not in factory
    factory.revoke(new)
    assert factory.store == {}
    with pytest.raises(KeyError):
        factory.revoke(new)


def test_subclass_hooks_also_serve_the_async_forms() -> None:
    factory = DictBacked()

    async def main() -> None:
        key = await factory.aissue({"a": 1})
        assert await factory.aget(key) == {"a": 1}
        assert await factory.acontains(key)
        new = await factory.areissue(key)
        await factory.aupdate(new, {"b": 2})
        assert factory.store == {sha(new): {"b": 2}}
        await factory.arevoke(new)

    asyncio.run(main())
    assert factory.store == {}
    assert not factory.is_async


def test_key_collisions_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    factory = APIKeyFactory(SMALLEST)
    picks = iter("a" * 16 + "a" * 16 + "b" * 16)
    monkeypatch.setattr("asyncapy.util.secrets.choice", lambda alphabet: next(picks))
    first = factory.issue()
    assert first == "aapy_" + "a" * 16 + checksum("aapy_" + "a" * 16)
    assert factory.issue() == "aapy_" + "b" * 16 + checksum("aapy_" + "b" * 16)


def test_the_async_forms_over_the_memory_store() -> None:
    factory = APIKeyFactory()

    async def main() -> None:
        key = await factory.aissue({"n": 1})
        assert await factory.aget(key) == {"n": 1}
        await factory.aupdate(key, {"n": 2})
        new = await factory.areissue(key)
        assert not await factory.acontains(key)
        assert await factory.aget(new) == {"n": 2}
        with pytest.raises(KeyError):
            await factory.aget(key)
        await factory.arevoke(new)
        with pytest.raises(KeyError):
            await factory.arevoke(new)
        with pytest.raises(KeyError):
            await factory.aupdate(new, {})

    asyncio.run(main())
    assert not factory.is_async  # memory: the filter stays synchronous


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
