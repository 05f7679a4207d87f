-- Accept events: XADD each to its partition stream and record it in the session's live
-- interactions, atomically (all or nothing for the whole call).
-- KEYS, 4 per event: stream, live items zset, live ratings hash, live registry zset
-- ARGV: now_ms, live_ttl_ms, live_cap, then 7 per event:
--       session_id, item_id, timestamp, type, rating ('' = none given), default rating,
--       session hash (hex, the live registry member)
local now_ms = tonumber(ARGV[1])
local ttl_ms = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local n = (#ARGV - 3) / 7
local ids = {}
for e = 0, n - 1 do
  local a = 3 + e * 7
  local k = e * 4
  local stream, lv, lr, reg = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local session, item, ts, typ, rating = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  if rating == '' then
    ids[e + 1] = redis.call('XADD', stream, '*', 'session', session, 'item', item, 'ts', ts, 'type', typ)
    rating = ARGV[a + 6]
  else
    ids[e + 1] = redis.call('XADD', stream, '*', 'session', session, 'item', item, 'ts', ts, 'type', typ,
                            'rating', rating)
  end
  redis.call('ZADD', lv, 'GT', ts, item)
  local current = redis.call('HGET', lr, item)
  if (not current) or tonumber(rating) > tonumber(current) then
    redis.call('HSET', lr, item, rating)
  end
  local size = redis.call('ZCARD', lv)
  if size > cap then
    local dropped = redis.call('ZPOPMIN', lv, size - cap)
    for d = 1, #dropped, 2 do redis.call('HDEL', lr, dropped[d]) end
  end
  redis.call('PEXPIRE', lv, ttl_ms)
  redis.call('PEXPIRE', lr, ttl_ms)
  redis.call('ZADD', reg, now_ms, ARGV[a + 7])
  redis.call('ZREMRANGEBYSCORE', reg, '-inf', now_ms - ttl_ms)
end
return ids
