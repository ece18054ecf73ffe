"""The interfaces of :class:`~asyncapy.stores.redis.RedisStore`: Redis keys and Lua scripts.

Keys (``P`` is the store's prefix):

* ``P key:<digest>``: HASH ``hint``, ``metadata`` (JSON), ``created``;
  ``P keys``: ZSET of digests scored by ``created`` (for :meth:`records`).
* ``P sessions:<worker>``: HASH address -> count of one worker (expires
  after 2 ttl: garbage collection only); ``P workers``: ZSET of workers
  scored by the millisecond (server ``TIME``) at which they stop counting.
* ``P rate:<key>``: the TAT in microseconds of the server's ``TIME``,
  expiring at the TAT.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from . import KeyRecord, KeyStore, RateDecision, RateStore, SessionRegistry, StoreError, redact_url
from ._common import US, check_rate_args, check_ttl, dump_metadata, load_metadata

if TYPE_CHECKING:
    from .redis import RedisStore

ADD: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'hint', ARGV[2], 'metadata', ARGV[3], 'created', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 1
"""
SET_METADATA: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'metadata', ARGV[1])
return 1
"""
DELETE: Final = """
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return n
"""
REPLACE: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= ARGV[2] and redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[2], 'hint', ARGV[3], 'metadata', ARGV[4], 'created', ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
return 1
"""
RECORDS: Final = """
local out = {}
for _, d in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local f = redis.call('HMGET', ARGV[1] .. d, 'hint', 'metadata', 'created')
  if f[1] then
    out[#out + 1] = d; out[#out + 1] = f[1]; out[#out + 1] = f[2]; out[#out + 1] = f[3]
  end
end
return out
"""
NOW_MS: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
START: Final = (
    NOW_MS
    + """
redis.call('DEL', KEYS[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)
HEARTBEAT: Final = (
    NOW_MS
    + """
local added = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if added == 1 then  -- purged as dead: come back with this worker's own counts
  redis.call('DEL', KEYS[2])
  for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
end
redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[2]))
return added
"""
)
LIVE_SUM: Final = """
local total = 0
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  total = total + (tonumber(redis.call('HGET', ARGV[5] .. w, ARGV[2])) or 0)
end
"""
ACQUIRE: Final = (
    NOW_MS
    + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)
for _, w in ipairs(dead) do
  redis.call('DEL', ARGV[5] .. w)
  redis.call('ZREM', KEYS[1], w)
end
"""
    + LIVE_SUM
    + """
if total >= tonumber(ARGV[3]) then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[4]))
return 1
"""
)
COUNT: Final = NOW_MS + LIVE_SUM + "return total\n"
RELEASE: Final = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""
STOP: Final = """
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 0
"""
CONSUME: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
if tat - tau > now then return {0, string.format('%.0f', tat - tau - now), 0} end
local new = tat + T
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000))
local slack = now + tau - new
if slack < 0 then return {1, 0, 0} end
return {1, 0, math.floor(slack / T) + 1}
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisKeyStore(KeyStore):
    """API key records as Redis hashes, with a sorted-set index by creation time."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    def _k(self, digest: str) -> str:
        return f"{self._store.prefix}key:{digest}"

    def _index(self) -> str:
        return f"{self._store.prefix}keys"

    def _add(self, r: KeyRecord) -> tuple[str, list[str], list[Any]]:
        args = [r.digest, r.hint, dump_metadata(r.metadata), repr(float(r.created))]
        return ADD, [self._k(r.digest), self._index()], args

    def _set(self, digest: str, metadata: Mapping[str, Any]) -> tuple[str, list[str], list[Any]]:
        return SET_METADATA, [self._k(digest)], [dump_metadata(metadata)]

    def _del(self, digest: str) -> tuple[str, list[str], list[Any]]:
        return DELETE, [self._k(digest), self._index()], [digest]

    def _rep(self, old: str, r: KeyRecord) -> tuple[str, list[str], list[Any]]:
        args = [old, r.digest, r.hint, dump_metadata(r.metadata), repr(float(r.created))]
        return REPLACE, [self._k(old), self._k(r.digest), self._index()], args

    def _replaced(self, old: str, result: Any) -> bool:
        if int(result) < 0:
            url = redact_url(self._store.url)
            raise StoreError(
                f"{url}: cannot replace {old[:12]}...: the new digest is already stored"
            )
        return bool(int(result))

    def _recs(self) -> tuple[str, list[str], list[Any]]:
        return RECORDS, [self._index()], [f"{self._store.prefix}key:"]

    @staticmethod
    def _record(digest: str, fields: list[Any]) -> KeyRecord | None:
        if fields[0] is None:
            return None
        return KeyRecord(digest, _text(fields[0]), load_metadata(fields[1]), float(fields[2]))

    @staticmethod
    def _records(flat: list[Any]) -> list[KeyRecord]:
        out = []
        for i in range(0, len(flat), 4):
            out.append(
                KeyRecord(
                    _text(flat[i]),
                    _text(flat[i + 1]),
                    load_metadata(flat[i + 2]),
                    float(flat[i + 3]),
                )
            )
        return out

    def get(self, digest: str) -> KeyRecord | None:
        return self._record(
            digest,
            self._store.sync_execute("HMGET", self._k(digest), "hint", "metadata", "created"),
        )

    def add(self, record: KeyRecord) -> bool:
        return bool(int(self._store.sync_script(*self._add(record))))

    def set_metadata(self, digest: str, metadata: Mapping[str, Any]) -> bool:
        return bool(int(self._store.sync_script(*self._set(digest, metadata))))

    def delete(self, digest: str) -> bool:
        return bool(int(self._store.sync_script(*self._del(digest))))

    def replace(self, old: str, record: KeyRecord) -> bool:
        return self._replaced(old, self._store.sync_script(*self._rep(old, record)))

    def records(self) -> list[KeyRecord]:
        return self._records(self._store.sync_script(*self._recs()))

    async def aget(self, digest: str) -> KeyRecord | None:
        fields = await self._store.execute("HMGET", self._k(digest), "hint", "metadata", "created")
        return self._record(digest, fields)

    async def aadd(self, record: KeyRecord) -> bool:
        return bool(int(await self._store.script(*self._add(record))))

    async def aset_metadata(self, digest: str, metadata: Mapping[str, Any]) -> bool:
        return bool(int(await self._store.script(*self._set(digest, metadata))))

    async def adelete(self, digest: str) -> bool:
        return bool(int(await self._store.script(*self._del(digest))))

    async def areplace(self, old: str, record: KeyRecord) -> bool:
        return self._replaced(old, await self._store.script(*self._rep(old, record)))

    async def arecords(self) -> list[KeyRecord]:
        return self._records(await self._store.script(*self._recs()))


class RedisSessionRegistry(SessionRegistry):
    """Sessions as one Redis hash per worker, liveness as a sorted set (see the module).

    Each worker also keeps its own counts: a heartbeat that finds its worker
    purged (it missed ``ttl``) writes them back.

    Raises:
        StoreError: also when a method other than :meth:`astart` is called before it.
        ValueError: ``ttl`` <= 0.
    """

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._worker: str | None = None
        self._ttl_ms = 0
        self._mine: dict[str, int] = {}

    def _keys(self) -> list[str]:
        if self._worker is None:
            raise StoreError(
                f"{redact_url(self._store.url)}: the session registry is used before astart()"
            )
        return [f"{self._store.prefix}workers", f"{self._store.prefix}sessions:{self._worker}"]

    async def astart(self, worker: str, ttl: float) -> None:
        ttl_ms = max(1, round(check_ttl(ttl) * 1000))
        self._worker, self._ttl_ms, self._mine = worker, ttl_ms, {}
        await self._store.script(START, self._keys(), [worker, ttl_ms])

    async def aheartbeat(self) -> None:
        keys = self._keys()
        mine = [item for pair in self._mine.items() for item in pair]
        await self._store.script(HEARTBEAT, keys, [self._worker, self._ttl_ms, *mine])

    def _args(self, address: str, limit: int) -> list[Any]:
        return [self._worker, address, limit, self._ttl_ms, f"{self._store.prefix}sessions:"]

    async def aacquire(self, address: str, limit: int) -> bool:
        keys = self._keys()
        counted = bool(int(await self._store.script(ACQUIRE, keys, self._args(address, limit))))
        if counted:
            self._mine[address] = self._mine.get(address, 0) + 1
        return counted

    async def arelease(self, address: str) -> None:
        keys = self._keys()
        if address in self._mine:
            self._mine[address] -= 1
            if self._mine[address] <= 0:
                del self._mine[address]
        await self._store.script(RELEASE, keys[1:], [address])

    async def acount(self, address: str) -> int:
        return int(await self._store.script(COUNT, self._keys(), self._args(address, 0)))

    async def astop(self) -> None:
        if self._worker is None:
            return
        keys, worker = self._keys(), self._worker
        self._worker, self._mine = None, {}
        await self._store.script(STOP, keys, [worker])


class RedisRateStore(RateStore):
    """GCRA states as Redis strings (TAT: microseconds of the server's ``TIME``), one script a call.

    Raises:
        ValueError: from :meth:`aconsume`, an ``interval`` <= 0 or a ``burst`` < 1.
    """

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    async def aconsume(self, key: str, interval: float, burst: int) -> RateDecision:
        t_us = check_rate_args(interval, burst)
        keys = [f"{self._store.prefix}rate:{key}"]
        allowed, wait, remaining = await self._store.script(
            CONSUME, keys, [t_us, t_us * (burst - 1)]
        )
        return RateDecision(bool(allowed), int(wait) / US, int(remaining))

    async def areset(self, key: str) -> None:
        await self._store.execute("DEL", f"{self._store.prefix}rate:{key}")
