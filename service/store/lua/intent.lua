-- Redis Cluster: before a batch's effects go to other slots, fix the batch's end in the
-- partition's slot, so that however often it is retried, by whichever worker, every slot sees
-- the same batch boundaries (apply.lua skips what its mark says it has).
-- KEYS[1] stream, KEYS[2] watermark, KEYS[3] in-flight mark, KEYS[4] admin epoch.
-- ARGV[1] expected watermark, ARGV[2] the batch's last entry, ARGV[3] its first entry,
-- ARGV[4] the admin epoch the batch's histories were read at.
-- Returns 1 when the batch may go ahead, -1 when the watermark moved, there is a gap, or the
-- batch runs past the in-flight mark.
--[[ops]]
local current = redis.call('GET', KEYS[2]) or ''
if current ~= ARGV[1] then return -1 end
if (redis.call('GET', KEYS[4]) or '') ~= ARGV[4] then return -1 end
local inflight = redis.call('GET', KEYS[3])
if inflight then
  if id_less(inflight, ARGV[2]) then return -1 end
  return 1
end
if not no_gap(KEYS[1], current, ARGV[3]) then return -1 end
redis.call('SET', KEYS[3], ARGV[2])
return 1
