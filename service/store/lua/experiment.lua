-- Start or end the experiment (service/core/feedback.py), one at a time.
-- KEYS[1] the running experiment (JSON), KEYS[2] every experiment by name (hash), KEYS[3] every
-- experiment's end by serial (hash: 0 while it runs, its end in Unix ms after; what workers read
-- to count only events that arrived while it ran)
-- ARGV[1] 'start' or 'end', ARGV[2] the name, ARGV[3] (start) the experiment's JSON, (end) the
-- ended one's JSON, ARGV[4] its serial, ARGV[5] (end) its end in Unix ms.
-- start: {1, json} when started; {0, running json} when one already runs (the caller compares:
-- the same name with the same variants is a retry, anything else a conflict).
-- end: {1, ''} when the named experiment was running and is now ended, {0, ''} otherwise.
local running = redis.call('GET', KEYS[1])
if ARGV[1] == 'start' then
  if running then return {0, running} end
  redis.call('SET', KEYS[1], ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  redis.call('HSET', KEYS[3], ARGV[4], '0')
  return {1, ARGV[3]}
end
if not running or redis.call('HGET', KEYS[2], ARGV[2]) ~= running then
  return {0, ''}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
return {1, ''}
