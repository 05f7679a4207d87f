-- Apply one batch of a partition's events: effects, the 'already applied' watermark and the
-- XACK commit together, so a crash at any point leaves either all of it or none of it.
-- KEYS[1] stream, KEYS[2] watermark, KEYS[3] counters, KEYS[4] dead letters,
-- KEYS[5] trending zset, KEYS[6] meta hash, KEYS[7..] keys the ops name by index.
-- ARGV[1] group, ARGV[2] expected watermark ('' = none yet), ARGV[3] new watermark (the
-- batch's last entry above the watermark, or ARGV[2] when there is none), ARGV[4] half-life
-- (s), ARGV[5] applied count, ARGV[6] new sessions, ARGV[7] n_ack, then the n_ack ids, then
-- the batch's first entry above the watermark ('' = none), then n_dead, then 3 per dead entry
-- (id, reason, raw fields as JSON), then ops:
--   'X' key old_entry new_entry cap   neighbour index: replace/insert a sorted 16-byte entry,
--                                      keep the newest cap entries
--   'H' key value ttl_ms              learned session history
--   'D' key field n                   document frequency (sessions containing the item)
--   'N' key field value               item id behind a hash (first writer wins)
--   'T' member ts weight              trending: log2-sum of weight * 2^(ts / half_life)
local current = redis.call('GET', KEYS[2]) or ''
if current ~= ARGV[2] then
  return -1
end
local half_life = tonumber(ARGV[4])
local i = 7
local n_ack = tonumber(ARGV[i])
local acks = {}
for a = 1, n_ack do acks[a] = ARGV[i + a] end
i = i + n_ack + 1
-- No gap: the first entry above the watermark must be the stream's next entry after it.
-- Otherwise an older batch, delivered to another reader during a lease handover, has not been
-- applied yet, and moving the watermark past it would drop it.
local first = ARGV[i]
i = i + 1
if first ~= '' then
  local start = '-'
  if current ~= '' then start = '(' .. current end
  local next_entry = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 1)
  if #next_entry == 0 or next_entry[1][1] ~= first then
    return -1
  end
end
local n_dead = tonumber(ARGV[i])
for d = 0, n_dead - 1 do
  local b = i + d * 3
  redis.call('XADD', KEYS[4], '*', 'id', ARGV[b + 1], 'reason', ARGV[b + 2], 'fields', ARGV[b + 3])
end
i = i + n_dead * 3 + 1

local ENTRY = 16
local function splice_index(key, old, new, cap)
  local blob = redis.call('GET', key) or ''
  local count = #blob / ENTRY
  -- binary search: first entry >= x, over entries 0..count-1
  local function lower_bound(x)
    local lo, hi = 0, count
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if string.sub(blob, mid * ENTRY + 1, mid * ENTRY + ENTRY) < x then lo = mid + 1 else hi = mid end
    end
    return lo
  end
  if old ~= '' then
    local at = lower_bound(old)
    if at < count and string.sub(blob, at * ENTRY + 1, at * ENTRY + ENTRY) == old then
      blob = string.sub(blob, 1, at * ENTRY) .. string.sub(blob, at * ENTRY + ENTRY + 1)
      count = count - 1
    end
  end
  local at = lower_bound(new)
  blob = string.sub(blob, 1, at * ENTRY) .. new .. string.sub(blob, at * ENTRY + 1)
  count = count + 1
  if count > cap then
    blob = string.sub(blob, (count - cap) * ENTRY + 1)
  end
  redis.call('SET', key, blob)
end

local LN2 = math.log(2)
local function trend(member, ts, weight)
  if weight <= 0 then return end
  local add = ts / half_life + math.log(weight) / LN2
  local old = redis.call('ZSCORE', KEYS[5], member)
  local value = add
  if old then
    old = tonumber(old)
    local hi, lo = math.max(old, add), math.min(old, add)
    value = hi + math.log(1 + 2 ^ (lo - hi)) / LN2
  end
  redis.call('ZADD', KEYS[5], value, member)
end

while i <= #ARGV do
  local op = ARGV[i]
  if op == 'X' then
    splice_index(KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4]))
    i = i + 5
  elseif op == 'H' then
    redis.call('SET', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], 'PX', ARGV[i + 3])
    i = i + 4
  elseif op == 'D' then
    redis.call('HINCRBY', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'N' then
    redis.call('HSETNX', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'T' then
    trend(ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]))
    i = i + 4
  else
    return redis.error_reply('commit: unknown op ' .. tostring(op))
  end
end

redis.call('SET', KEYS[2], ARGV[3])
redis.call('HINCRBY', KEYS[3], 'processed', ARGV[5])
if n_dead > 0 then redis.call('HINCRBY', KEYS[3], 'dead', n_dead) end
if tonumber(ARGV[6]) > 0 then redis.call('HINCRBY', KEYS[6], 'sessions', ARGV[6]) end
if n_ack > 0 then redis.call('XACK', KEYS[1], ARGV[1], unpack(acks)) end
return 1
