-- Change one placement (service/core/placements.py): KEYS[1] the placements (a hash, name ->
-- JSON), KEYS[2] their version (a counter every serve process polls). ARGV[1] 'put' or
-- 'delete', ARGV[2] the name, ARGV[3] the JSON (put), ARGV[4] how many placements may exist.
-- Returns the new version; 0 when a put of a new name would pass the limit, -1 when a delete
-- found no such placement. One step, so that two operators never pass the limit together.
local exists = redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1
if ARGV[1] == 'put' then
  if not exists and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
    return 0
  end
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
else
  if not exists then
    return -1
  end
  redis.call('HDEL', KEYS[1], ARGV[2])
end
return redis.call('INCR', KEYS[2])
