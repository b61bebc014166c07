"""The Lua scripts that make shared limits atomic on one Redis, and the key names they use.

Each script runs as one atomic step on the server, on the server's clock (`TIME`, milliseconds): every
instance sees the same time, so no clock skew between hosts can widen a window or stretch a lease.

Layout (all under `akr:`; `K` a key id, `B` a budget id, `I` an instance id):

    akr:w:K      ZSET  request log of the key's 60 s window: member "rid|tokens", score = reserved at (ms)
    akr:wt:K     STR   the tokens of the members above (kept in step, so tpm needs no scan); both expire a
                       minute after the last entry
    akr:f:K      ZSET  in-flight reservations: member rid, score = its lease end (ms); expires with the
                       longest lease
    akr:d:K      HASH  the key's rpd window: hour index -> requests (25 hours kept; only while rpd is set)
    akr:m:K      HASH  its tokens/month window: day index -> tokens (31 days; only while tokens_per_month is set)
    akr:bench:K  STR   the key is benched for every instance (an open breaker, a throttle) until its PTTL ends
    akr:life:K   STR   a lifecycle state shared without end ("invalid", "revoked"), cleared by an enable
    akr:b:B      HASH  p = period index, spent, res (nano-dollars, integers)
    akr:bh:B     ZSET  holds: member rid, score = lease end (ms)
    akr:ba:B     HASH  hold amounts: rid -> nano-dollars
    akr:cw:S     ZSET  a client's or team's 60 s window (S "client:acme", "team:search"): as akr:w:K
    akr:cwt:S    STR   the tokens of its members (as akr:wt:K); both expire a minute after the last entry
    akr:ix:I     HASH  what instance I holds: rid -> "fkey budget budget ..." (to reclaim it when I dies)
    akr:inst     ZSET  live instances: member I, score = heartbeat expiry (ms)

Windows are sliding logs, not GCRA: a provider's "rpm" counts requests in any trailing minute, and a
log holds exactly that (at most `rpm` members in any 60 s), where GCRA's burst plus refill lets up to
twice the limit through in a minute that starts with a full bucket. The log costs one member per
request in the window (bounded by the limit itself) and trimming is amortised O(1). The day and month
windows (`rpd`, `tokens_per_month`) would make such a log as long as a day's or a month's requests, so they
count in buckets instead, the shape the key actor's own quota has (domain/quota.py): 24 hours plus the
current one, 30 days plus the current one; a request leaves with its bucket (up to one bucket late: the
window errs long, never short).

Client and team windows (`[[clients]] rpm/tpm`, `[[teams]] rpm/tpm`) are the same exact sliding logs,
checked and taken in the reserve script with the key's windows and the money holds: all or nothing, on
one clock, so every instance together admits at most `rpm` requests (and `tpm` worst-case tokens) of a
client in any trailing 60 s of Redis's time: zero overshoot while Redis answers. A settle keeps the
entry with its actual tokens; a release, or a settle without a charge (the attempt failed upstream, its
budget hold freed), removes it, as the budget actor's own windows do; the entries of an instance that died stay for the
rest of their minute (their requests were most likely sent).

Money is integer nano-dollars (exact in Lua's doubles below 2**53, about $9 million per budget).
Numbers go back to Redis through `s()`, because Lua would print 1e15 as "1e+15", which HINCRBY refuses.
"""

from __future__ import annotations

from typing import Final

__all__ = ["BUDGETS", "HEARTBEAT", "PREFIX", "REPLAY", "REPLAY_SCOPES", "RESERVE", "SETTLE", "SHARE_STATE"]

PREFIX: Final = "akr:"

_COMMON = """
local function s(n) return string.format('%d', n) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- trim a window log: members older than cutoff leave, their tokens with them
local function trim(w, wt, cutoff)
  local old = redis.call('ZRANGEBYSCORE', w, '-inf', '(' .. s(cutoff))
  if #old == 0 then return end
  local gone = 0
  for _, m in ipairs(old) do gone = gone + tonumber(string.match(m, '|(%d+)$')) end
  redis.call('ZREMRANGEBYSCORE', w, '-inf', '(' .. s(cutoff))
  redis.call('DECRBY', wt, s(gone))
end
-- free the holds of a budget whose lease ended
local function expire_holds(b, bh, ba, now)
  local old = redis.call('ZRANGEBYSCORE', bh, '-inf', s(now))
  if #old == 0 then return end
  for _, rid in ipairs(old) do
    local amt = redis.call('HGET', ba, rid)
    if amt then redis.call('HINCRBY', b, 'res', '-' .. amt); redis.call('HDEL', ba, rid) end
  end
  redis.call('ZREMRANGEBYSCORE', bh, '-inf', s(now))
end
local function roll(b, period_s, now)
  local p = 0
  if period_s > 0 then p = math.floor(now / 1000 / period_s) elseif period_s < 0 then p = -period_s end
  if tonumber(redis.call('HGET', b, 'p') or '-1') ~= p then
    redis.call('HSET', b, 'p', s(p), 'spent', '0')
  end
end
local function unhold(bkey, rid)
  local bh, ba = 'akr:bh:' .. bkey, 'akr:ba:' .. bkey
  local amt = redis.call('HGET', ba, rid)
  if amt then
    redis.call('HINCRBY', 'akr:b:' .. bkey, 'res', '-' .. amt)
    redis.call('HDEL', ba, rid)
    redis.call('ZREM', bh, rid)
  end
end
-- a long window in buckets (rpd: hours, tokens/month: days), the local quota's shape: HASH bucket -> count.
-- Counts the current bucket and the n before it; older ones leave. Returns the count and the buckets kept.
local function long_used(h, width, n, now)
  local cur = math.floor(now / width)
  local all = redis.call('HGETALL', h)
  local used, keep, old = 0, {}, {}
  for i = 1, #all, 2 do
    local idx, c = tonumber(all[i]), tonumber(all[i + 1])
    if idx < cur - n then old[#old + 1] = all[i] else used = used + c; keep[#keep + 1] = {idx, c} end
  end
  if #old > 0 then redis.call('HDEL', h, unpack(old)) end
  table.sort(keep, function(a, b) return a[1] < b[1] end)
  return used, keep
end
-- when `need` has left the window: the end of the bucket whose leaving frees enough
local function long_retry(keep, need, width, n, now)
  for _, b in ipairs(keep) do
    need = need - b[2]
    if need <= 0 then return (b[1] + n + 1) * width - now end
  end
  return width
end
local function long_add(h, width, n, at, count)
  redis.call('HINCRBY', h, s(math.floor(at / width)), s(count))
  redis.call('PEXPIRE', h, s((n + 2) * width))
end
local HOUR, DAY = 3600000, 86400000
-- an entry in a 60 s window log (a key's, a client's or a team's) and its tokens; both leave Redis a
-- minute after the newest entry (by then every member is out of the window), so an unused key costs nothing
local function window_add(cw, cwt, at, member, tokens)
  redis.call('ZADD', cw, s(at), member)
  redis.call('INCRBY', cwt, s(tokens))
  redis.call('PEXPIRE', cw, 61000)
  redis.call('PEXPIRE', cwt, 61000)
end
-- a settled (actual >= 0) or released (actual < 0) entry of a client's or team's window
local function scope_settle(scope, member, rid, est, actual)
  local cw, cwt = 'akr:cw:' .. scope, 'akr:cwt:' .. scope
  local at = redis.call('ZSCORE', cw, member)
  if not at then return end
  redis.call('ZREM', cw, member)
  if actual < 0 then redis.call('DECRBY', cwt, s(est)); return end
  redis.call('ZADD', cw, at, rid .. '|' .. s(actual))
  redis.call('INCRBY', cwt, s(actual - est))
end
local function reclaim(inst)
  local ix = 'akr:ix:' .. inst
  local entries = redis.call('HGETALL', ix)
  for i = 1, #entries, 2 do
    local rid = entries[i]
    local first = true
    for part in string.gmatch(entries[i + 1], '%S+') do
      if first then redis.call('ZREM', 'akr:f:' .. part, rid); first = false else unhold(part, rid) end
    end
  end
  redis.call('DEL', ix)
  return #entries / 2
end
"""

# KEYS: none (names are built from ARGV, for a single Redis, not a cluster).
# ARGV: inst, rid, key, tokens, rpm, tpm, max_in_flight (-1: none), lease_ms, amount (nano$), n, then n x
#       (budget id, limit nano$, period: period_s > 0, or minus a calendar period's start, or 0: none),
#       then rpd, tokens_per_month (-1: none; counted only while set), then m, then m x (scope, rpm, tpm:
#       a client's or team's window, -1: none)
# Returns {"ok", now} or {refusal kind, retry_ms (-1: unknown, -2: never), detail...}; a full client or team
# window is {"scope", retry_ms, scope, "rpm" | "tpm", limit, used}.
RESERVE: Final = (
    _COMMON
    + """
local inst, rid, key = ARGV[1], ARGV[2], ARGV[3]
local tokens, rpm, tpm, maxf = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local lease, amount, n = tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10])
local now = now_ms()
local w, wt, f = 'akr:w:' .. key, 'akr:wt:' .. key, 'akr:f:' .. key
local life = redis.call('GET', 'akr:life:' .. key)
if life then return {'lifecycle', -1, life} end
local bench = redis.call('PTTL', 'akr:bench:' .. key)
if bench > 0 then return {'bench', bench, redis.call('GET', 'akr:bench:' .. key) or ''} end
redis.call('ZREMRANGEBYSCORE', f, '-inf', s(now))
if maxf >= 0 and redis.call('ZCARD', f) >= maxf then return {'in_flight', -1, s(maxf)} end
trim(w, wt, now - 60000)
if rpm >= 0 and redis.call('ZCARD', w) >= rpm then
  if rpm == 0 then return {'rpm', -2, s(rpm)} end
  local oldest = redis.call('ZRANGE', w, 0, 0, 'WITHSCORES')
  return {'rpm', tonumber(oldest[2]) + 60000 - now, s(rpm)}
end
if tpm >= 0 then
  local used = tonumber(redis.call('GET', wt) or '0')
  if used + tokens > tpm then
    if tokens > tpm then return {'tpm', -2, s(tpm)} end
    local excess = used + tokens - tpm
    local log = redis.call('ZRANGE', w, 0, -1, 'WITHSCORES')
    for i = 1, #log, 2 do
      excess = excess - tonumber(string.match(log[i], '|(%d+)$'))
      if excess <= 0 then return {'tpm', tonumber(log[i + 1]) + 60000 - now, s(tpm)} end
    end
    return {'tpm', 60000, s(tpm)}
  end
end
local base = 10
local rpd, tmo = tonumber(ARGV[base + 1 + n * 3] or '-1'), tonumber(ARGV[base + 2 + n * 3] or '-1')
local dh, mh = 'akr:d:' .. key, 'akr:m:' .. key
if rpd >= 0 then
  local used, keep = long_used(dh, HOUR, 24, now)
  if used + 1 > rpd then
    if rpd == 0 then return {'rpd', -2, s(rpd)} end
    return {'rpd', long_retry(keep, used + 1 - rpd, HOUR, 24, now), s(rpd)}
  end
end
if tmo >= 0 then
  local used, keep = long_used(mh, DAY, 30, now)
  if used + tokens > tmo then
    if tokens > tmo then return {'tokens/month', -2, s(tmo)} end
    return {'tokens/month', long_retry(keep, used + tokens - tmo, DAY, 30, now), s(tmo)}
  end
end
local m = tonumber(ARGV[base + 3 + n * 3] or '0')
local sbase = base + 3 + n * 3
for j = 0, m - 1 do
  local scope = ARGV[sbase + 1 + j * 3]
  local srpm, stpm = tonumber(ARGV[sbase + 2 + j * 3]), tonumber(ARGV[sbase + 3 + j * 3])
  local cw, cwt = 'akr:cw:' .. scope, 'akr:cwt:' .. scope
  trim(cw, cwt, now - 60000)
  local count = redis.call('ZCARD', cw)
  if srpm >= 0 and count + 1 > srpm then
    local oldest = redis.call('ZRANGE', cw, 0, 0, 'WITHSCORES')
    local retry = -2
    if #oldest > 0 then retry = tonumber(oldest[2]) + 60000 - now end
    return {'scope', retry, scope, 'rpm', s(srpm), s(count)}
  end
  if stpm >= 0 then
    local used = tonumber(redis.call('GET', cwt) or '0')
    if used + tokens > stpm then
      if tokens > stpm then return {'scope', -2, scope, 'tpm', s(stpm), s(used)} end
      local excess = used + tokens - stpm
      local log = redis.call('ZRANGE', cw, 0, -1, 'WITHSCORES')
      for i = 1, #log, 2 do
        excess = excess - tonumber(string.match(log[i], '|(%d+)$'))
        if excess <= 0 then return {'scope', tonumber(log[i + 1]) + 60000 - now, scope, 'tpm', s(stpm), s(used)} end
      end
      return {'scope', 60000, scope, 'tpm', s(stpm), s(used)}
    end
  end
end
for i = 0, n - 1 do
  local bid, limit, period = ARGV[base + 1 + i * 3], tonumber(ARGV[base + 2 + i * 3]), tonumber(ARGV[base + 3 + i * 3])
  local b, bh, ba = 'akr:b:' .. bid, 'akr:bh:' .. bid, 'akr:ba:' .. bid
  expire_holds(b, bh, ba, now)
  roll(b, period, now)
  if not redis.call('HGET', ba, rid) then
    local spent = tonumber(redis.call('HGET', b, 'spent') or '0')
    local res = tonumber(redis.call('HGET', b, 'res') or '0')
    if spent + res + tonumber(amount) > limit then
      return {'budget', -1, bid, s(limit), s(spent), s(res)}
    end
  end
end
local index = key
for i = 0, n - 1 do
  local bid = ARGV[base + 1 + i * 3]
  local ba = 'akr:ba:' .. bid
  if not redis.call('HGET', ba, rid) then
    redis.call('HSET', ba, rid, amount)
    redis.call('HINCRBY', 'akr:b:' .. bid, 'res', amount)
    redis.call('ZADD', 'akr:bh:' .. bid, s(now + lease), rid)
  end
  index = index .. ' ' .. bid
end
window_add(w, wt, now, rid .. '|' .. s(tokens), tokens)
redis.call('ZADD', f, s(now + lease), rid)
if redis.call('PTTL', f) < lease then redis.call('PEXPIRE', f, s(lease + 1000)) end
for j = 0, m - 1 do
  local scope = ARGV[sbase + 1 + j * 3]
  window_add('akr:cw:' .. scope, 'akr:cwt:' .. scope, now, rid .. '|' .. s(tokens), tokens)
end
if rpd >= 0 then long_add(dh, HOUR, 24, now, 1) end
if tmo >= 0 then long_add(mh, DAY, 30, now, tokens) end
redis.call('HSET', 'akr:ix:' .. inst, rid, index)
return {'ok', now}
"""
)

# ARGV: inst, rid, key, est_tokens, actual_tokens (-1: release, the provider never saw it), charge (nano$,
#       -1: none), n, then n x (budget id, period_s), then the reserve's time (ms; -1: unknown, read from the
#       window log), then m, then m x scope (the client and team windows the reserve took). The rpd and
#       tokens/month buckets are corrected once per reservation: while this instance's index still lists it
#       (a reclaimed one stays counted at its estimate: never under).
SETTLE: Final = (
    _COMMON
    + """
local inst, rid, key = ARGV[1], ARGV[2], ARGV[3]
local est, actual, charge, n = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local now = now_ms()
local w, wt = 'akr:w:' .. key, 'akr:wt:' .. key
local member = rid .. '|' .. s(est)
local at = tonumber(ARGV[8 + n * 2] or '-1')
if at < 0 then at = tonumber(redis.call('ZSCORE', w, member) or '-1') end
if redis.call('HDEL', 'akr:ix:' .. inst, rid) == 1 and at >= 0 then
  local dh, mh = 'akr:d:' .. key, 'akr:m:' .. key
  local hour, day = s(math.floor(at / HOUR)), s(math.floor(at / DAY))
  if actual < 0 then
    if redis.call('HEXISTS', dh, hour) == 1 then redis.call('HINCRBY', dh, hour, '-1') end
    if redis.call('HEXISTS', mh, day) == 1 then redis.call('HINCRBY', mh, day, s(-est)) end
  elseif actual ~= est and redis.call('HEXISTS', mh, day) == 1 then
    redis.call('HINCRBY', mh, day, s(actual - est))
  end
end
if actual < 0 then
  if redis.call('ZREM', w, member) == 1 then redis.call('DECRBY', wt, s(est)) end
elseif actual ~= est then
  local at = redis.call('ZSCORE', w, member)
  if at then
    redis.call('ZREM', w, member)
    redis.call('ZADD', w, at, rid .. '|' .. s(actual))
    redis.call('INCRBY', wt, s(actual - est))
  end
end
redis.call('ZREM', 'akr:f:' .. key, rid)
local m = tonumber(ARGV[9 + n * 2] or '0')
-- no charge: the attempt failed upstream and its budget hold was freed, and with it the entry of the budget
-- actor's own client and team windows; the shared ones give theirs back too (a failover counts once)
local scoped = actual
if tonumber(charge) < 0 then scoped = -1 end
for j = 1, m do scope_settle(ARGV[9 + n * 2 + j], member, rid, est, scoped) end
for i = 0, n - 1 do
  local bid, period = ARGV[8 + i * 2], tonumber(ARGV[9 + i * 2])
  unhold(bid, rid)
  if tonumber(charge) >= 0 then
    roll('akr:b:' .. bid, period, now)
    redis.call('HINCRBY', 'akr:b:' .. bid, 'spent', charge)
  end
end
return now
"""
)

# ARGV: inst, ttl_ms, reclaim_self ("1": this instance's previous life left holds behind; give them back)
# Returns {live instances, reservations reclaimed, now}.
HEARTBEAT: Final = (
    _COMMON
    + """
local inst, ttl, fresh = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local now = now_ms()
local reclaimed = 0
if fresh == '1' then reclaimed = reclaimed + reclaim(inst) end
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', 'akr:inst', '-inf', s(now))) do
  if dead ~= inst then reclaimed = reclaimed + reclaim(dead) end
  redis.call('ZREM', 'akr:inst', dead)
end
redis.call('ZADD', 'akr:inst', s(now + ttl), inst)
return {redis.call('ZCOUNT', 'akr:inst', s(now), '+inf'), reclaimed, now}
"""
)

# Share a key's bench or lifecycle with every instance. ARGV: key, what ("bench" | "life" | "clear"),
# value, ttl_ms (bench only). Returns 1 when it changed something (the caller then publishes it), 0 when
# Redis knew already: an instance applying another's bench shares it back within a second of the same
# end, which changes nothing here, so an echo is never published again (no ping-pong between instances).
SHARE_STATE: Final = """
local key, what, value, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if what == 'bench' then
  local left = redis.call('PTTL', 'akr:bench:' .. key)
  if ttl <= left + 1000 then return 0 end
  redis.call('SET', 'akr:bench:' .. key, value, 'PX', string.format('%d', ttl))
  return 1
elseif what == 'life' then
  if redis.call('GET', 'akr:life:' .. key) == value then return 0 end
  redis.call('SET', 'akr:life:' .. key, value)
  return 1
end
return redis.call('DEL', 'akr:life:' .. key, 'akr:bench:' .. key) > 0 and 1 or 0
"""

# What an instance admitted on its local share while Redis was away, written into the key's window when
# it is back, so the requests already sent count against the rest of their minute (and day and month, when
# the key has rpd or tokens_per_month). ARGV: inst, key, n, then n x (age_ms, tokens), then "1"/"0": count
# rpd, count tokens/month. Replayed members are named "<inst>/replay/<n>:<now>" (never settled).
REPLAY: Final = (
    _COMMON
    + """
local inst, key, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local w, wt = 'akr:w:' .. key, 'akr:wt:' .. key
for i = 0, n - 1 do
  local age, tokens = tonumber(ARGV[4 + i * 2]), tonumber(ARGV[5 + i * 2])
  if age < 60000 then
    window_add(w, wt, now - age, inst .. '/replay/' .. s(i) .. ':' .. s(now) .. '|' .. s(tokens), tokens)
  end
  if ARGV[4 + n * 2] == '1' then long_add('akr:d:' .. key, HOUR, 24, now - age, 1) end
  if ARGV[5 + n * 2] == '1' then long_add('akr:m:' .. key, DAY, 30, now - age, tokens) end
end
return n
"""
)

# What an instance admitted for clients and teams on its local share while Redis was away, written into
# their windows when it is back (as REPLAY for a key). ARGV: inst, n, then n x (scope, age_ms, tokens).
REPLAY_SCOPES: Final = (
    _COMMON
    + """
local inst, n = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
for i = 0, n - 1 do
  local scope, age, tokens = ARGV[3 + i * 3], tonumber(ARGV[4 + i * 3]), tonumber(ARGV[5 + i * 3])
  if age < 60000 then
    local member = inst .. '/replay/' .. s(i) .. ':' .. s(now) .. '|' .. s(tokens)
    window_add('akr:cw:' .. scope, 'akr:cwt:' .. scope, now - age, member, tokens)
  end
end
return n
"""
)

# What every instance together has spent and holds on each budget, for `GET /budgets` (reads only: a hold
# whose lease ended is not counted, a period that has turned reads as 0 spent, as the next reserve would
# roll it). ARGV: n, then n x (budget id, period as in RESERVE). Returns 2n numbers: spent, held (nano$).
BUDGETS: Final = (
    _COMMON
    + """
local n = tonumber(ARGV[1])
local now = now_ms()
local out = {}
for i = 0, n - 1 do
  local bid, period = ARGV[2 + i * 2], tonumber(ARGV[3 + i * 2])
  local b, ba = 'akr:b:' .. bid, 'akr:ba:' .. bid
  local p = 0
  if period > 0 then p = math.floor(now / 1000 / period) elseif period < 0 then p = -period end
  local spent = 0
  if tonumber(redis.call('HGET', b, 'p') or '-1') == p then spent = tonumber(redis.call('HGET', b, 'spent') or '0') end
  local held = 0
  for _, rid in ipairs(redis.call('ZRANGEBYSCORE', 'akr:bh:' .. bid, '(' .. s(now), '+inf')) do
    held = held + tonumber(redis.call('HGET', ba, rid) or '0')
  end
  out[#out + 1] = s(spent)
  out[#out + 1] = s(held)
end
return out
"""
)
