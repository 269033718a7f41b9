"""Coalescing across proxies on one Redis: a short in-flight marker with a lease.

The first proxy to miss a key takes `<ns>:f:<key>` with SET NX PX (its own random id as
the value, the lease as the expiry) and renews it every third of the lease while it
computes and until its answer's write has landed in Redis. Any other proxy that misses
the same key meanwhile finds the marker taken and waits: for the holder's release
(published on `<ns>:f:done`, which wakes it at once) or for the marker to vanish (a
cheap PTTL poll every POLL_S covers a lost message and a holder that died: a killed
proxy stops renewing, so its marker expires within one lease). Then the waiter looks
the answer up; if there is none (the holder failed, or its answer was not storable),
it takes the marker itself and computes.

Because the marker outlives the answer's write, a proxy asked right after another sent
an answer either finds the answer in Redis or finds the marker and waits for the answer:
read-after-write across the fleet. Taking the marker also checks, in the same script,
whether the answer landed after the caller's lookup, so that race is a hit, not a miss.

Redis down: claims answer DOWN (compute, no marker), waits return at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cachelayer.periodic import Periodic
from cachelayer.proxy.store.backends.base import Claim

log = logging.getLogger(__name__)
POLL_S = 0.25  # a waiter re-checks the marker this often when no release message came

# KEYS: answer, marker; ARGV: holder id, lease ms. 2: answered, 1: taken, 0: held.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 2 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
# KEYS: marker; ARGV: holder id, channel, key. Only the holder's own marker goes.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""
# KEYS: markers; ARGV: holder id, lease ms. Extends only the markers still ours.
_RENEW = """
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('PEXPIRE', k, ARGV[2]); n = n + 1 end
end
return n
"""


class RedisFleet:
    """This proxy's markers in Redis and its waits on other proxies' markers."""

    def __init__(self, client: aioredis.Redis, namespace: str, *, lease_s: float) -> None:
        self.client = client
        self.lease_s = lease_s
        self.prefix = f"{namespace}:f:"
        self.answer_prefix = f"{namespace}:r:"
        self.channel = f"{namespace}:f:done"
        self.holder = secrets.token_hex(8)
        self._held: set[str] = set()
        self._wakers: dict[str, set[asyncio.Event]] = {}
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._renewer = Periodic(self._renew_held, lease_s / 3, name="fleet lease renewal")
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        self.waits = 0
        self.renewals = 0
        self.lease_expiries = 0

    async def start(self) -> None:
        """Start renewing held markers and listening for released ones."""
        self._renewer.start()
        self._listener = asyncio.create_task(self._listen(), name="fleet release listener")

    async def claim(self, key: str) -> Claim:
        """Take the marker for key unless it is held or the answer is already in."""
        try:
            found = await self._claim(keys=[self.answer_prefix + key, self.prefix + key],
                                      args=[self.holder, int(self.lease_s * 1000)])
        except (RedisError, OSError) as exc:
            log.debug("fleet claim failed (%s): computing without a marker", exc)
            return Claim.DOWN
        if found == 1:
            self._held.add(key)
            return Claim.MINE
        return Claim.ANSWERED if found == 2 else Claim.OTHER

    async def wait(self, key: str, timeout: float) -> bool:
        """Until the marker for key is gone: woken by its holder's release message, or
        seen gone by a PTTL poll (its lease ran out); False on timeout."""
        self.waits += 1
        wake = asyncio.Event()
        self._wakers.setdefault(key, set()).add(wake)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    ttl = await self.client.pttl(self.prefix + key)
                except (RedisError, OSError):
                    return True  # the fleet cannot be asked: stop waiting on it
                if ttl == -2:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), min(POLL_S, left))
                wake.clear()
        finally:
            wakers = self._wakers.get(key)
            if wakers is not None:
                wakers.discard(wake)
                if not wakers:
                    del self._wakers[key]

    def holds(self, key: str) -> bool:
        """Whether this proxy holds the marker for key."""
        return key in self._held

    async def release(self, key: str) -> None:
        """Drop this proxy's marker and publish the key, waking every waiting proxy."""
        self._held.discard(key)
        try:
            await self._release(keys=[self.prefix + key], args=[self.holder, self.channel, key])
        except (RedisError, OSError) as exc:
            # The lease runs out by itself; waiters see it gone within a lease.
            log.debug("fleet release failed (%s); the marker expires with its lease", exc)

    async def _renew_held(self) -> None:
        if not self._held:
            return
        held = list(self._held)
        try:
            renewed = await self._renew(keys=[self.prefix + k for k in held],
                                        args=[self.holder, int(self.lease_s * 1000)])
        except (RedisError, OSError) as exc:
            log.debug("fleet lease renewal failed: %s", exc)
            return
        self.renewals += 1
        if int(renewed) < len(held):
            # A stall past the lease let a marker expire (another proxy may compute it
            # too); only a duplicate computation, never a wrong answer.
            self.lease_expiries += len(held) - int(renewed)

    async def _listen(self) -> None:
        """Wake local waiters when any proxy releases a key; reconnect while Redis is
        away (the PTTL poll carries the waits meanwhile)."""
        while not self._closing:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                while not self._closing:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._wake(message.get("data"))
            except (RedisError, OSError) as exc:
                log.debug("fleet listener lost redis (%s); retrying", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    def _wake(self, data: object) -> None:
        key = data.decode() if isinstance(data, bytes) else str(data)
        for wake in self._wakers.get(key, ()):
            wake.set()

    def snapshot(self) -> dict[str, Any]:
        """Markers held now, waits on other proxies, leases lost to a stall."""
        return {"leaseS": self.lease_s, "markersHeld": len(self._held),
                "fleetWaits": self.waits, "leaseExpiries": self.lease_expiries}

    async def aclose(self) -> None:
        """Release every held marker, stop renewing and listening."""
        self._closing = True
        for key in list(self._held):
            await self.release(key)
        await self._renewer.stop()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
