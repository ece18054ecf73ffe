"""``asyncapy keys``: issue, list, revoke, reissue against SQLite and a real redis-server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from asyncapy.cli import main
from asyncapy.stores import KeyRecord
from asyncapy.util import APIKeyFactory
from tests import services

redis_server = services.redis_server

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keys.db'}"
        return
    server: services.RedisServer = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url)
    client.flushdb()
    client.close()
    yield server.url


def keys(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["keys", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_issue_list_reissue_revoke(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = keys(
        capsys, "issue", "--store", store, "-m", "user=ann", "--json", '{"plan": "pro"}'
    )
    assert status == 0
    key = out.strip()
    factory = APIKeyFactory(store=store)
    assert factory.get(key) == {"plan": "pro", "user": "ann"}

    status, out, _ = keys(capsys, "list", "--store", store)
    assert status == 0
    assert key not in out
    (line,) = out.splitlines()
    key_id = line.split()[0]
    assert key_id == factory.digest(key)[:12]
    assert f"...{key[-4:]}" in line

    status, out, _ = keys(capsys, "list", "--store", store, "--json")
    row = json.loads(out)
    assert row["metadata"] == {"plan": "pro", "user": "ann"}
    assert key not in out

    status, out, err = keys(capsys, "reissue", "--store", store, key_id)
    assert status == 0
    new_key = out.strip()
    assert key not in factory
    assert factory.get(new_key) == {"plan": "pro", "user": "ann"}
    assert f"revoked {key_id}" in err

    status, _, _ = keys(capsys, "revoke", "--store", store, new_key)  # by the key itself
    assert status == 0
    assert new_key not in factory
    status, _, err = keys(capsys, "revoke", "--store", store, new_key)
    assert status == 1
    assert "no such key" in err
    factory.backend.close()


def test_revoke_by_an_ambiguous_or_short_id_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 'k.db'}"
    factory = APIKeyFactory(store=store)
    for tail in ("0", "1"):  # two records whose digests share 8 hex digits
        factory.backend.keys.add(KeyRecord("abcdef12" + tail * 56, "", {}, 0.0))
    made = factory.issue({"n": 1})
    digest = factory.digest(made)
    status, _, err = keys(capsys, "revoke", "--store", store, "abcdef12")
    assert status == 1
    assert "matches 2 keys" in err
    status, _, err = keys(capsys, "revoke", "--store", store, digest[:7])  # too short
    assert status == 1
    assert "no such key" in err
    assert made in factory
    status, _, _ = keys(capsys, "revoke", "--store", store, digest[:8].upper())
    assert status == 0
    assert made not in factory
    assert len(factory.backend.keys.records()) == 2


def test_usage_errors(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASYNCAPY_STORE", raising=False)
    status, _, err = keys(capsys, "issue")
    assert status == 2
    assert "--store" in err
    status, _, err = keys(capsys, "issue", "--store", "memory://")
    assert status == 2
    assert "forgets" in err
    status, _, err = keys(capsys, "issue", "--store", "ftp://x")
    assert status == 2
    status, _, err = keys(capsys, "issue", "--store", "sqlite:///x.db", "-m", "novalue")
    assert status == 2
    status, _, err = keys(capsys, "issue", "--store", "sqlite:///x.db", "--json", "[1]")
    assert status == 2


def test_unreachable_redis_is_one_line_and_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    port = services.free_port()
    status, _, err = keys(capsys, "list", "--store", f"redis://:hunter2@127.0.0.1:{port}/0")
    assert status == 1
    assert len(err.strip().splitlines()) == 1
    assert "hunter2" not in err


def test_pepper_comes_from_the_environment(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'p.db'}"
    env = {"ASYNCAPY_KEY_PEPPER": "pepper!", "PATH": "/usr/bin:/bin"}
    issued = subprocess.run(
        [sys.executable, "-m", "asyncapy", "keys", "issue", "--store", store],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    key = issued.stdout.strip()
    assert key in APIKeyFactory(store=store, pepper="pepper!")
    assert key not in APIKeyFactory(store=store)
