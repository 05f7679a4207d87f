-- Record what an answer given to a session listed (service/core/feedback.py, answer_record),
-- within the partition's budget for this hour: past it the answer is not recorded, and its
-- feedback counts nowhere, so a flood of requests cannot grow Redis beyond the budget.
-- KEYS[1] the record, KEYS[2] the partition's bytes used this hour
-- ARGV[1] the record, ARGV[2] its lifetime (s), ARGV[3] the hour's budget (bytes), ARGV[4] the
-- bytes it is charged (its size in Redis), ARGV[5] the counter's lifetime (s)
-- Returns 1 when recorded, 0 when the budget was spent.
local used = redis.call('INCRBY', KEYS[2], ARGV[4])
if used == tonumber(ARGV[4]) then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
if used > tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
