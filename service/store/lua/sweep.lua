-- Sweep one step of an item shard: the names and document frequencies of items whose neighbour
-- index has expired (no event for history_ttl) go too, so that per-item state stays bounded
-- under a flood of invented ids. Index, names and frequencies share the shard's slot, so the
-- check and the deletes are one atomic step (a commit cannot slip between them).
-- KEYS[1] names hash, KEYS[2] document frequencies hash; ARGV[1] cursor, ARGV[2] fields per
-- step, ARGV[3] index key prefix (the item hash in hex follows).
-- Returns {next cursor, removed item ids...}: the caller removes them from trending (another
-- slot on a cluster).
local scan = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local out = {scan[1]}
local fields = scan[2]
for f = 1, #fields, 2 do
  local item = fields[f]
  if redis.call('EXISTS', ARGV[3] .. item) == 0 then
    redis.call('HDEL', KEYS[1], item)
    redis.call('HDEL', KEYS[2], item)
    out[#out + 1] = fields[f + 1]
  end
end
return out
