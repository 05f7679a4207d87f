-- Change one placement (service/core/placements.py): KEYS[1] the placements (a hash, name ->
-- JSON), KEYS[2] their version (a counter every serve process polls), KEYS[3] each one's
-- serial (a hash, name -> the serial it was created with), KEYS[4] the last serial taken.
-- ARGV[1] 'put' or 'delete', ARGV[2] the name, ARGV[3] the JSON (put), ARGV[4] how many
-- placements may exist. Returns the new version; 0 when a put of a new name would pass the
-- limit, -1 when a delete found no such placement. One step, so that two operators never pass
-- the limit together. A placement created takes a new serial (its counts start afresh, even
-- under a name used before); one replaced keeps its own.
local exists = redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1
if ARGV[1] == 'put' then
  if not exists then
    if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
      return 0
    end
    redis.call('HSET', KEYS[3], ARGV[2], redis.call('INCR', KEYS[4]))
  end
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
else
  if not exists then
    return -1
  end
  redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
end
return redis.call('INCR', KEYS[2])
