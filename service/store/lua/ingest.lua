-- Accept events: XADD each to its partition stream and record it in the session's live
-- interactions, atomically (all or nothing for the whole call).
-- KEYS[1] the batch-token zset of the first event's partition, KEYS[2] the request's
-- idempotency record (same slot; any key of it when there is none), then 4 per event: stream,
-- live items zset, live ratings hash, live registry zset
-- ARGV: token ('' = none), now_ms, live_ttl_ms, live_cap, idempotency record to keep for a day
-- ('' = none), then 8 per event:
--       session_id, item_id, timestamp, type, rating ('' = none given), default rating,
--       session hash (hex, the live registry member), recommendation id ('' = none)
-- An impression goes into the stream only: it is not interest, so not the live session.
-- A token makes the call idempotent: a journalled batch replayed after a crash (Redis Cluster,
-- batches spanning partitions) is applied once. Tokens are remembered for an hour.
-- An idempotency record makes a client's retry of the same request (an Idempotency-Key header)
-- a no-op that answers {'replay', first record} for a day.
--
-- Per event only what depends on the event's order runs (the XADD, the zset's GT update, the
-- rating's maximum, the cap); what does not (expiries, the registry) runs once per session and
-- registry at the end, with the same outcome: a batch of a few sessions costs a third of the
-- calls. Each session's live size and ratings are tracked here after their first read.
local token = ARGV[1]
local now_ms = tonumber(ARGV[2])
local ttl_ms = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local record = ARGV[5]
if record ~= '' then
  local first = redis.call('GET', KEYS[2])
  if first then return {'replay', first} end
  redis.call('SET', KEYS[2], record, 'EX', 86400)
end
if token ~= '' then
  if redis.call('ZSCORE', KEYS[1], token) then return {} end
  redis.call('ZADD', KEYS[1], now_ms, token)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - 3600000)
end
local n = (#ARGV - 5) / 8
local ids = {}
local sessions = {}  -- live items key -> {ratings key, registry key, member, size, ratings}
local order = {}
for e = 0, n - 1 do
  local a = 5 + e * 8
  local k = 2 + e * 4
  local stream, lv = KEYS[k + 1], KEYS[k + 2]
  local session, item, ts, typ, rating = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  local rid = ARGV[a + 8]
  if rating == '' and rid == '' then
    ids[e + 1] = redis.call('XADD', stream, '*', 'session', session, 'item', item, 'ts', ts, 'type', typ)
  elseif rid == '' then
    ids[e + 1] = redis.call('XADD', stream, '*', 'session', session, 'item', item, 'ts', ts, 'type', typ,
                            'rating', rating)
  elseif rating == '' then
    ids[e + 1] = redis.call('XADD', stream, '*', 'session', session, 'item', item, 'ts', ts, 'type', typ,
                            'rid', rid)
  else
    ids[e + 1] = redis.call('XADD', stream, '*', 'session', session, 'item', item, 'ts', ts, 'type', typ,
                            'rating', rating, 'rid', rid)
  end
  if rating == '' then rating = ARGV[a + 6] end
  if typ ~= 'impression' then
    local s = sessions[lv]
    if not s then
      s = {KEYS[k + 3], KEYS[k + 4], ARGV[a + 7], redis.call('ZCARD', lv), {}}
      sessions[lv] = s
      order[#order + 1] = lv
    end
    local lr, known = s[1], s[5]
    s[4] = s[4] + redis.call('ZADD', lv, 'GT', ts, item)
    local current = known[item]
    if current == nil then
      current = redis.call('HGET', lr, item)
      current = current and tonumber(current) or false
    end
    local value = tonumber(rating)
    if (not current) or value > current then
      redis.call('HSET', lr, item, rating)
      current = value
    end
    known[item] = current
    if s[4] > cap then
      local dropped = redis.call('ZPOPMIN', lv, s[4] - cap)
      for d = 1, #dropped, 2 do
        redis.call('HDEL', lr, dropped[d])
        known[dropped[d]] = false
      end
      s[4] = cap
    end
  end
end
local registries = {}
for _, lv in ipairs(order) do
  local s = sessions[lv]
  redis.call('PEXPIRE', lv, ttl_ms)
  redis.call('PEXPIRE', s[1], ttl_ms)
  redis.call('ZADD', s[2], now_ms, s[3])
  registries[s[2]] = true
end
for reg in pairs(registries) do
  redis.call('ZREMRANGEBYSCORE', reg, '-inf', now_ms - ttl_ms)
end
return ids
