-- Apply one batch of a partition's events: effects, the 'already applied' watermark and the
-- XACK commit together, so a crash at any point leaves either all of it or none of it.
-- On Redis Cluster the effects on other slots went first (intent.lua, apply.lua) and this
-- commits the partition's own part.
-- KEYS[1] stream, KEYS[2] watermark, KEYS[3] counters, KEYS[4] dead letters, KEYS[5] in-flight
-- mark, KEYS[6] the partition's admin epoch, KEYS[7..] keys the ops name by index.
-- ARGV[1] group, ARGV[2] expected watermark ('' = none yet), ARGV[3] new watermark (the
-- batch's last entry above the watermark, or ARGV[2] when there is none), ARGV[4] applied
-- count, ARGV[5] index cap, ARGV[6] index limit, ARGV[7] history ttl (ms), ARGV[8] the admin
-- epoch the batch's histories were read at ('' = none yet; an admin operation that rewrote them
-- since makes the batch read them again), ARGV[9] n_ack, then the n_ack ids, then the batch's first entry
-- above the watermark ('' = none), then n_dead, then the dead-letter stream's cap, then 3 per
-- dead entry (id, reason, raw fields as JSON), then ops (see ops.lua).
--[[ops]]
local current = redis.call('GET', KEYS[2]) or ''
if current ~= ARGV[2] then
  return -1
end
if (redis.call('GET', KEYS[6]) or '') ~= ARGV[8] then
  return -1
end
local i = 9
local n_ack = tonumber(ARGV[i])
local acks = {}
for a = 1, n_ack do acks[a] = ARGV[i + a] end
i = i + n_ack + 1
if not no_gap(KEYS[1], current, ARGV[i]) then
  return -1
end
i = i + 1
local n_dead = tonumber(ARGV[i])
local dead_cap = ARGV[i + 1]
for d = 0, n_dead - 1 do
  local b = i + 1 + d * 3
  -- capped: a flood of unreadable entries must not grow Redis without bound
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', dead_cap, '*', 'id', ARGV[b + 1],
             'reason', ARGV[b + 2], 'fields', ARGV[b + 3])
end
i = i + n_dead * 3 + 2
local failed = run_ops(i, tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7])
if failed then return failed end

redis.call('SET', KEYS[2], ARGV[3])
local inflight = redis.call('GET', KEYS[5])
if inflight and (ARGV[3] == '' or not id_less(ARGV[3], inflight)) then
  redis.call('DEL', KEYS[5])
end
redis.call('HINCRBY', KEYS[3], 'processed', ARGV[4])
if n_dead > 0 then redis.call('HINCRBY', KEYS[3], 'dead', n_dead) end
if n_ack > 0 then redis.call('XACK', KEYS[1], ARGV[1], unpack(acks)) end
return 1
