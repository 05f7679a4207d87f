-- Redis Cluster: one slot's share of a partition batch's effects, applied once: the slot keeps,
-- per partition, the last entry id whose effects it holds, and skips batches at or below it.
-- KEYS[1] the slot's marks hash, KEYS[2..] keys the ops name by index.
-- ARGV[1] partition, ARGV[2] the batch's last entry id, ARGV[3] index cap, ARGV[4] index
-- limit, ARGV[5] history ttl (ms), ARGV[6] the batch's first entry id, ops from ARGV[7].
-- Returns 1 when applied, 0 when the slot holds the batch already, and {'overlap', mark} when
-- it holds only a part of it: two workers' batches over the same entries ended differently (a
-- lease that expired under a stalled holder), and applying this one would count that part
-- twice. The worker then cuts its batch at the mark and tries again.
--[[ops]]
local mark = redis.call('HGET', KEYS[1], ARGV[1])
if mark and not id_less(mark, ARGV[2]) then return 0 end
if mark and ARGV[6] ~= '' and not id_less(mark, ARGV[6]) then return {'overlap', mark} end
local failed = run_ops(7, tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5])
if failed then return failed end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
