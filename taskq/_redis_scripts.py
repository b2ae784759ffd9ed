"""The Lua scripts of the Redis broker: each moves jobs between states in one atomic step.

A client that dies between two commands can then never leave a job half-moved.
Keys (``P`` = ``taskq:{queue}:``): ``P queued`` (sorted set; score: the rank, member:
the zero-padded sequence from ``P seq`` then the id, so equal ranks sort by
submission order, exactly), ``P leases`` (sorted set; id scored by its lease
deadline in the server's clock, ms), ``P job:ID`` (hash), ``P notify:CLIENT`` (a list
per submitting client: ids of its jobs that ended, for a blocking pop), ``P kills:OWNER``
(set), ``P stats`` (hash of ended counts), ``P heartbeats`` (hash), ``P watch`` (sorted set
of serving clients, each scored by the rank a new job must come before to interest it:
+inf when it found the queue empty, the rank of the jobs it holds ahead when it holds
more than it runs; a put ranked before a score wakes that server by pushing an empty
string to its notify list, and takes it out of the set). Times come from the server's
``TIME``, never a client clock.
"""

from __future__ import annotations

NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# An ended job: its outcome stored, its call dropped, expiring after result_ttl.
END = """
local function finish(key, id, state, outcome, osig, ttl, now, me)
  redis.call('HSET', key, 'state', state, 'outcome', outcome, 'osig', osig, 'finished_at', now)
  redis.call('HDEL', key, 'call', 'kill')
  redis.call('PEXPIRE', key, ttl)
  local client = redis.call('HGET', key, 'client')
  if client and client ~= me then  -- tell the submitter (unless it is who ended the job)
    -- the outcome travels with the notice: the submitter needs no second read
    local box = KEYS[3] .. client
    redis.call('RPUSH', box, id .. '\\n' .. osig .. '\\n' .. outcome)
    redis.call('PEXPIRE', box, ttl)
  end
  redis.call('HINCRBY', KEYS[4], state, 1)
end
"""

# KEYS: queued, seq, job prefix, watch, notify prefix
# ARGV: id, rank, priority, name, call, options, sig, maxsize, aging (0: none), client,
#       ttl ms (of a wake-up notice)
PUT = (
    NOW
    + """
-- KEYS[6], when given: this client's set of puts run (its put connection has no
-- replies: _redis_puts.py checks the set; an hour's expiry if the client goes first)
local function ran()
  if KEYS[6] then
    redis.call('SADD', KEYS[6], ARGV[1])
    redis.call('PEXPIRE', KEYS[6], 3600000)
  end
  return 1
end
if redis.call('EXISTS', KEYS[3] .. ARGV[1]) == 1 then
  return ran()  -- sent again after a broken connection: it is already here
end
if tonumber(ARGV[8]) > 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[8]) then
  return 0
end
local rank = tonumber(ARGV[2])
if tonumber(ARGV[9]) > 0 then  -- aging: the server's clock, in seconds, per level
  rank = rank + now / 1000 / tonumber(ARGV[9])
end
rank = string.format('%.17g', rank)
local member = string.format('%020d', redis.call('INCR', KEYS[2])) .. ':' .. ARGV[1]
redis.call('HSET', KEYS[3] .. ARGV[1], 'state', 'queued', 'rank', rank, 'priority', ARGV[3],
  'name', ARGV[4], 'call', ARGV[5], 'options', ARGV[6], 'sig', ARGV[7], 'member', member,
  'attempts', 0, 'lost', 0, 'submitted_at', now, 'client', ARGV[10])
redis.call('ZADD', KEYS[1], rank, member)
-- wake the servers waiting for a job like this one (they registered when they claimed)
local after = '(' .. rank
local woken = redis.call('ZRANGE', KEYS[4], after, '+inf', 'BYSCORE')
if #woken > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], after, '+inf')
  for _, server in ipairs(woken) do
    redis.call('RPUSH', KEYS[5] .. server, '')
    redis.call('PEXPIRE', KEYS[5] .. server, ARGV[11])
  end
end
return ran()
"""
)

# KEYS: leases, job prefix, heartbeats | ARGV: owner, lease ms, ids...
RENEW = (
    NOW
    + """
local held = {}
for i = 3, #ARGV do
  local f = redis.call('HMGET', KEYS[2] .. ARGV[i], 'state', 'owner')
  if f[1] == 'running' and f[2] == ARGV[1] then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[i])
    held[#held + 1] = ARGV[i]
  end
end
redis.call('HSET', KEYS[3], ARGV[1], now)
return held
"""
)

# One step of a server: store the outcomes of the jobs it held, then claim more.
# KEYS: leases, job prefix, notify prefix, stats, kills set, queued, watch
# ARGV: owner, ttl ms, me (the serving client), lease ms, claim limit, before ('' or a
#       rank: claim only jobs ranked before it), watch ('1': this server holds jobs
#       ahead, wake it for a more urgent one), then (id, state, outcome, osig) per job
# Returns {ids stored, {id, name, priority, call, options, attempts, sig, rank} claimed}.
STEP = (
    NOW
    + END
    + """
local stored = {}
for i = 8, #ARGV, 4 do
  local id = ARGV[i]
  local key = KEYS[2] .. id
  local f = redis.call('HMGET', key, 'state', 'owner')
  if f[1] == 'running' and f[2] == ARGV[1] then  -- first outcome wins: only the holder's
    redis.call('ZREM', KEYS[1], id)
    redis.call('SREM', KEYS[5], id)
    finish(key, id, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[2], now, ARGV[3])
    stored[#stored + 1] = id
  end
end
local claimed = {}
local limit = tonumber(ARGV[5])
if limit > 0 then
  local head = redis.call('ZRANGE', KEYS[6], 0, limit - 1, 'WITHSCORES')
  for i = 1, #head, 2 do
    -- only jobs of the head's rank go together (see SqliteBroker.claim)
    if head[i + 1] ~= head[2] then break end
    if ARGV[6] ~= '' and tonumber(head[i + 1]) >= tonumber(ARGV[6]) then break end
    local member = head[i]
    redis.call('ZREM', KEYS[6], member)
    local id = string.sub(member, 22)
    local key = KEYS[2] .. id
    local attempts = redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('HSET', key, 'state', 'running', 'owner', ARGV[1], 'started_at', now)
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), id)
    if redis.call('HEXISTS', key, 'kill') == 1 then  -- killed while its last holder was lost
      redis.call('SADD', KEYS[5], id)
    end
    local f = redis.call('HMGET', key, 'name', 'priority', 'call', 'options', 'sig')
    claimed[#claimed + 1] = {id, f[1], f[2], f[3], f[4], attempts, f[5], head[i + 1]}
  end
  if ARGV[6] == '' and redis.call('ZCARD', KEYS[6]) == 0 then
    redis.call('ZADD', KEYS[7], 'inf', ARGV[3])  -- nothing left: the next put wakes it
  elseif ARGV[7] == '1' and #claimed > 0 then  -- a job ranked before these wakes it
    redis.call('ZADD', KEYS[7], claimed[#claimed][8], ARGV[3])
  end
end
return {stored, claimed}
"""
)

# KEYS: queued, leases, job prefix, kills set | ARGV: owner, n, ids... (the first n
# started, and keep their attempt; the claim of the others is uncounted)
RELEASE = """
for i = 3, #ARGV do
  local key = KEYS[3] .. ARGV[i]
  local f = redis.call('HMGET', key, 'state', 'owner', 'rank', 'member')
  if f[1] == 'running' and f[2] == ARGV[1] then
    redis.call('HSET', key, 'state', 'queued')
    if i - 2 > tonumber(ARGV[2]) then redis.call('HINCRBY', key, 'attempts', -1) end
    redis.call('HDEL', key, 'owner', 'kill')
    redis.call('ZREM', KEYS[2], ARGV[i])
    redis.call('SREM', KEYS[4], ARGV[i])
    redis.call('ZADD', KEYS[1], f[3], f[4])
  end
end
return 1
"""

# KEYS: queued, job prefix, notify prefix, stats, kills prefix
# ARGV: id, outcome, osig, ttl ms, kill a running job ('1'/'0'), me
# Returns the state the job was in ('queued' means: cancelled now).
KILL = (
    NOW
    + END
    + """
local key = KEYS[2] .. ARGV[1]
local f = redis.call('HMGET', key, 'state', 'member', 'owner')
if f[1] == 'queued' then
  redis.call('ZREM', KEYS[1], f[2])
  finish(key, ARGV[1], 'cancelled', ARGV[2], ARGV[3], ARGV[4], now, ARGV[6])
elseif f[1] == 'running' and ARGV[5] == '1' then
  redis.call('HSET', key, 'kill', 1)
  redis.call('SADD', KEYS[5] .. f[3], ARGV[1])
end
return f[1]
"""
)

# KEYS: leases, queued, job prefix | ARGV: max lost
# Puts back expired jobs; returns {put back, {id, owner, lost, attempts} of jobs to give up}.
RECLAIM = (
    NOW
    + """
local back, doomed = 0, {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  local key = KEYS[3] .. id
  local f = redis.call('HMGET', key, 'state', 'lost', 'member', 'rank', 'owner', 'attempts')
  if f[1] ~= 'running' then
    redis.call('ZREM', KEYS[1], id)
  elseif tonumber(f[2]) + 1 >= tonumber(ARGV[1]) then
    doomed[#doomed + 1] = {id, f[5], tonumber(f[2]) + 1, tonumber(f[6])}
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HSET', key, 'state', 'queued', 'lost', tonumber(f[2]) + 1)
    redis.call('HDEL', key, 'owner')  -- 'kill' stays: the next holder must stop it
    redis.call('ZADD', KEYS[2], f[4], f[3])
    back = back + 1
  end
end
return {back, doomed}
"""
)

# KEYS: leases, job prefix, notify prefix, stats
# ARGV: id, owner, outcome, osig, ttl ms, state, me
# Ends a job whose lease expired (given up, or refused by its signature) if nothing
# changed since the caller looked.
GIVE_UP = (
    NOW
    + END
    + """
local key = KEYS[2] .. ARGV[1]
local f = redis.call('HMGET', key, 'state', 'owner')
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if f[1] ~= 'running' or f[2] ~= ARGV[2] then return 0 end
if ARGV[6] == 'dead' and (not deadline or tonumber(deadline) > now) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HINCRBY', key, 'lost', ARGV[6] == 'dead' and 1 or 0)
finish(key, ARGV[1], ARGV[6], ARGV[3], ARGV[4], ARGV[5], now, ARGV[7])
return 1
"""
)

# KEYS: heartbeats | ARGV: owner  -> the server's time (ms), after noting a heartbeat
HEARTBEAT = (
    NOW
    + """
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], ARGV[1], now) end
return now
"""
)

# KEYS: queued, job prefix -> {priority, count, ...} of the queued jobs. Counted from the
# jobs' own priorities: the queue's scores are ranks (0 under fifo, moved by aging).
QUEUED_BY_PRIORITY = """
local counts = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local priority = redis.call('HGET', KEYS[2] .. string.sub(member, 22), 'priority')
  if priority then counts[priority] = (counts[priority] or 0) + 1 end
end
local out = {}
for priority, n in pairs(counts) do
  out[#out + 1] = priority
  out[#out + 1] = n
end
return out
"""
