-- Record what an answer given to a session listed (service/core/feedback.py, answer_record),
-- within two bounds per partition and hour: the client address' share (one address cannot
-- weigh more than that many answers, whatever sessions it invents) and the partition's budget
-- of bytes. Past the budget the hour is marked flooded and the worker counts none of its
-- answers: a flood can erase an hour's feedback, not select whose counts.
-- KEYS[1] the record, KEYS[2] the partition's bytes this hour, KEYS[3] the flood mark of the
-- hour, KEYS[4] the client's answers this hour in the partition
-- ARGV[1] the record, ARGV[2] its lifetime (s), ARGV[3] the hour's budget (bytes), ARGV[4] the
-- bytes it is charged (its size in Redis), ARGV[5] the counters' lifetime (s), ARGV[6] the
-- client's share (answers)
-- Returns 1 when recorded, 0 when the client's share was spent, -1 when the budget was.
local mine = redis.call('INCR', KEYS[4])
if mine == 1 then redis.call('EXPIRE', KEYS[4], ARGV[5]) end
if mine > tonumber(ARGV[6]) then return 0 end
local used = redis.call('INCRBY', KEYS[2], ARGV[4])
if used == tonumber(ARGV[4]) then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
if used > tonumber(ARGV[3]) then
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
  return -1
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
