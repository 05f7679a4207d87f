-- Redis Cluster: journal a batch that spans partitions (Store.ingest), checking and keeping its
-- idempotency record in the same step. KEYS[1] the journal of the first event's partition,
-- KEYS[2] the idempotency record (same slot). ARGV[1] token, ARGV[2] payload, ARGV[3] record
-- to keep for a day ('' = none), ARGV[4] the most entries a journal holds. Returns '' when
-- journalled, 'full' when the journal is at its cap (entries pile up only while appends fail:
-- the caller answers 503 rather than grow it), else the record of the request that used the
-- key first (nothing journalled).
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return 'full' end
if ARGV[3] ~= '' then
  local first = redis.call('GET', KEYS[2])
  if first then return first end
  redis.call('SET', KEYS[2], ARGV[3], 'EX', 86400)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return ''
