"""The Lua scripts of the Redis cache adapter, each with its ``KEYS``, ``ARGV`` and reply.

Each runs as one atomic round trip; :mod:`taskiq_flow.cache.redis` describes the key
layout and why each transition is a script, and registers them. They live apart from
the adapter because they are another language and the server's side of the protocol:
read (and changed) together, with the contract each states, rather than between the
Python methods that call them.
"""

from __future__ import annotations

# KEYS: value, lease. ARGV: token, lease ms, SHA-1 of an entry to ignore ('' = none).
# -> {1, payload} | {0, holder token} | {2} (acquired)
_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if v and (ARGV[3] == '' or redis.sha1hex(v) ~= ARGV[3]) then return {1, v} end
local holder = redis.call('GET', KEYS[2])
if holder then return {0, holder} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {2}
"""

# The first look of a call (a hit, or a miss that takes the lease in the same round trip).
# KEYS: value, lease. ARGV: token, lease ms.
# -> the entry (bulk string) | 2 (acquired) | {holder token}
# A lease the token holds already (claimed by a producer at send and adopted by the
# worker, or taken by this very script before a dropped connection made redis-py send it
# again) is renewed to a full lease and reported acquired: an adopting worker needs no
# renewal round trip of its own. So the script is repeatable.
_READ_OR_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if v then return v end
local holder = redis.call('GET', KEYS[2])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 2
end
if holder then return {holder} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 2
"""

# KEYS: lease. ARGV: token, lease ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: value, lease, wake list. ARGV: token, payload, ttl ms ('' = none), wake ttl ms,
# status ('ok' = store payload, 'err' = creator failed, store nothing).
# The value is stored only while ARGV[1] still holds the lease: a lease that lapsed (and
# maybe went to another creator) or was removed by an invalidation stores nothing, so a
# creation invalidated while in flight never writes its outdated value back.
_COMMIT = """
local released = 0
if redis.call('GET', KEYS[2]) == ARGV[1] then
  if ARGV[5] == 'ok' then
    if ARGV[3] == '' then
      redis.call('SET', KEYS[1], ARGV[2])
    else
      redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    end
  end
  redis.call('DEL', KEYS[2])
  released = 1
end
redis.call('RPUSH', KEYS[3], ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return released
"""

# -- listing and invalidation (not part of the lock) ----------------------------------------

# KEYS: value, lease. -> whether the value was there. The lease goes too: a creation in
# flight then stores nothing (see _COMMIT).
_DELETE = """
local removed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
return removed
"""

# KEYS: tag set. ARGV: key, ttl ms ('' = none). The set lives as long as its longest entry.
_TAG = """
local fresh = redis.call('EXISTS', KEYS[1]) == 0
redis.call('SADD', KEYS[1], ARGV[1])
if ARGV[2] == '' then
  redis.call('PERSIST', KEYS[1])
else
  local left = redis.call('PTTL', KEYS[1])
  if fresh or (left >= 0 and left < tonumber(ARGV[2])) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
end
return 1
"""

# KEYS: tag set, a private name for it (same slot). ARGV: ms the private set may linger
# if the invalidation dies half-way. -> 1 if the tag had a set.
_TAKE_TAG = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
return 1
"""

# Cluster-wide stats (taskiq_flow.cache.shared_stats): one process's pending counts added
# to the one stats hash in one atomic step. KEYS: the hash. ARGV: field, count, ...
_ADD_STATS = """
for i = 1, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
return #ARGV / 2
"""
