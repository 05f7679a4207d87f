-- Shared by commit.lua and apply.lua (spliced in where a script says --[[ops]]).
-- Ops, after their code, name keys by their index in KEYS (cap, limit and ttl_ms are per script):
--   'X' key old_entry new_entry       neighbour index: replace/insert a sorted 16-byte entry,
--                                      keep the newest cap entries (readers read those; up to
--                                      a slack more may wait, older, for the next trim); the
--                                      index expires ttl_ms after its item's latest event
--   'H' key value                     learned session history, expiring after ttl_ms
--   'D' key count field n ...         add n to each of count hash fields (document frequency,
--                                      session count)
--   'N' key field value               item id behind a hash (first writer wins)
--   'A' key keep count score member ...
--                                      sessions' arrivals: set each member's score, then keep
--                                      the zset's newest keep members
--   'T' key count member log2_value ...
--                                      trending: log2-sum with the stored values (the worker
--                                      folds a batch's events per item into one value)
--   'R' key offset bytes              an answer record's flags (what its feedback counted),
--                                      written only while the record lives
-- 'D' and 'T' take a whole batch per key: one read and one write per chunk of fields, instead
-- of a call or two per field (a third of the commit's time went to these calls one by one).
local ENTRY = 16
local WINDOW = 32  -- entries at an index's end that a splice reads before it reads them all
-- Numbers handed to redis.call are formatted with '%.17g' (printf's slowest path: a tenth of
-- Redis' time in the commit went there); offsets and counts go as strings made with '%d'.
local LAST, TAIL, END = tostring(-ENTRY), string.format('%d', -WINDOW * ENTRY), '-1'

-- ``blob`` (sorted entries) without ``old`` (when present) and with ``new`` in order; nil when
-- ``blob`` is only the newest part of an index (``partial``) and the splice could reach below it.
local function splice(blob, old, new, partial)
  local count = #blob / ENTRY
  local function entry(n) return string.sub(blob, n * ENTRY + 1, n * ENTRY + ENTRY) end
  if partial then
    local first = entry(0)
    if new < first or (old ~= '' and old < first) then return nil end
  end
  -- binary search: first entry >= x, over entries 0..count-1
  local function lower_bound(x)
    local lo, hi = 0, count
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if entry(mid) < x then lo = mid + 1 else hi = mid end
    end
    return lo
  end
  if old ~= '' then
    local at = lower_bound(old)
    if at < count and entry(at) == old then
      blob = string.sub(blob, 1, at * ENTRY) .. string.sub(blob, at * ENTRY + ENTRY + 1)
      count = count - 1
    end
  end
  local at = lower_bound(new)
  return string.sub(blob, 1, at * ENTRY) .. new .. string.sub(blob, at * ENTRY + 1)
end

-- Move or insert one session's entry in an item's index, in place. Redis' Lua hashes every
-- byte of every string it makes, so an index is never read whole when its end will do: an
-- entry newer than all is a GETRANGE of the last entry and an APPEND (the usual case: the
-- stream is in time order); a session's earlier entry for the item, or an entry slightly older
-- than another partition's newest, is found among the last WINDOW entries, which are rewritten
-- with one SETRANGE (same length, or one entry longer). Only a splice reaching further reads
-- and writes the whole index. An index longer than limit entries is cut back to its newest cap
-- (the caller passes both: service/core/layout.py index_limit is the rule); readers use the
-- newest cap.
local refreshed = {}  -- index keys whose expiry this call has pushed back already

local function splice_index(key, old, new, cap, limit, ttl_ms)
  local size
  if old == '' then
    local last = redis.call('GETRANGE', key, LAST, END)
    if last == '' or new > last then
      size = redis.call('APPEND', key, new)
    end
  end
  if size == nil then
    local tail = redis.call('GETRANGE', key, TAIL, END)
    local whole = #tail < WINDOW * ENTRY
    local spliced = splice(tail, old, new, not whole)
    local offset = 0
    if spliced == nil then
      tail = redis.call('GET', key)
      spliced = splice(tail, old, new, false)
    elseif not whole then
      offset = redis.call('STRLEN', key) - #tail
    end
    -- never shorter than what it replaces (an entry moved, or one more): SETRANGE covers it
    size = redis.call('SETRANGE', key, string.format('%d', offset), spliced)
  end
  if size > limit * ENTRY then
    redis.call('SET', key, redis.call('GETRANGE', key, string.format('%d', -cap * ENTRY), END),
               'PX', ttl_ms)
    refreshed[key] = true
  elseif not refreshed[key] then
    -- an item that sees no event for ttl_ms goes (its names, frequency and trending entry are
    -- swept after it: sweep.lua), so a flood of invented ids cannot grow Redis for good
    redis.call('PEXPIRE', key, ttl_ms)
    refreshed[key] = true
  end
end

local LN2 = math.log(2)
local log = math.log
local CHUNK = 500  -- fields per read and write (unpack's stack is limited)

-- Merge values ARGV[at + 2f + 1] into fields ARGV[at + 2f] (f = 0..count-1), CHUNK at a time
-- (one read and one write each): op 'T' log2-sums them into a zset's scores, op 'D' adds them
-- to a hash's counts (HINCRBY in bulk). One tight loop per op: trending was a third of the
-- commit, and half of that went to the shared loop's bookkeeping and to string.format. A merged
-- score goes to ZADD as a number (Redis writes it with '%.17g': the same double); a new member's
-- score as the worker wrote it (repr: the same double, without printf's slowest path); counts
-- (integers far below 2^53) as '%d' strings, the same digits.
local function merge_fields(op, key, at, count)
  for first = 0, count - 1, CHUNK do
    local last = math.min(first + CHUNK, count) - 1
    local fields = {}
    for f = first, last do fields[f - first + 1] = ARGV[at + 2 * f] end
    local args = {}
    if op == 'T' then
      local olds = redis.call('ZMSCORE', key, unpack(fields))
      for n = 1, last - first + 1 do
        local value = ARGV[at + 2 * (first + n) - 1]  -- a new member's, as the worker wrote it
        local old = olds[n]
        if old then
          old, value = tonumber(old), tonumber(value)
          if old > value then
            value = old + log(1 + 2 ^ (value - old)) / LN2
          else
            value = value + log(1 + 2 ^ (old - value)) / LN2
          end
        end
        args[2 * n - 1] = value
        args[2 * n] = fields[n]
      end
      redis.call('ZADD', key, unpack(args))
    else
      local olds = redis.call('HMGET', key, unpack(fields))
      for n = 1, last - first + 1 do
        args[2 * n - 1] = fields[n]
        args[2 * n] = string.format('%d', (tonumber(olds[n]) or 0) + tonumber(ARGV[at + 2 * (first + n) - 1]))
      end
      redis.call('HSET', key, unpack(args))
    end
  end
end

-- Run the ops in ARGV[i..]; returns nil or an error reply.
local function run_ops(i, cap, limit, ttl_ms)
  while i <= #ARGV do
    local op = ARGV[i]
    if op == 'X' then
      splice_index(KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3], cap, limit, ttl_ms)
      i = i + 4
    elseif op == 'H' then
      redis.call('SET', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], 'PX', ttl_ms)
      i = i + 3
    elseif op == 'D' or op == 'T' then
      local count = tonumber(ARGV[i + 2])
      merge_fields(op, KEYS[tonumber(ARGV[i + 1])], i + 3, count)
      i = i + 3 + 2 * count
    elseif op == 'N' then
      redis.call('HSETNX', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3])
      i = i + 4
    elseif op == 'R' then
      -- never made again once expired: SETRANGE on a missing key would make one for good
      local key = KEYS[tonumber(ARGV[i + 1])]
      if redis.call('EXISTS', key) == 1 then
        redis.call('SETRANGE', key, ARGV[i + 2], ARGV[i + 3])
      end
      i = i + 4
    elseif op == 'A' then
      local key, keep, count = KEYS[tonumber(ARGV[i + 1])], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
      for first = 0, count - 1, CHUNK do
        local args = {}
        for f = first, math.min(first + CHUNK, count) - 1 do
          args[#args + 1] = ARGV[i + 4 + 2 * f]
          args[#args + 1] = ARGV[i + 5 + 2 * f]
        end
        redis.call('ZADD', key, unpack(args))
      end
      if redis.call('ZCARD', key) > keep then
        redis.call('ZREMRANGEBYRANK', key, '0', string.format('%d', -keep - 1))
      end
      i = i + 4 + 2 * count
    else
      return redis.error_reply('unknown op ' .. tostring(op))
    end
  end
  return nil
end

-- Stream ids 'ms-seq' compared as numbers.
local function id_less(a, b)
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end

-- No gap: the first entry above the watermark must be the stream's next entry after it.
-- Otherwise an older batch, delivered to another reader during a lease handover, has not been
-- applied yet, and moving the watermark past it would drop it.
local function no_gap(stream, current, first)
  if first == '' then return true end
  local start = '-'
  if current ~= '' then start = '(' .. current end
  local next_entry = redis.call('XRANGE', stream, start, '+', 'COUNT', 1)
  return #next_entry > 0 and next_entry[1][1] == first
end
