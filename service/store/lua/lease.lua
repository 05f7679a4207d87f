-- Take or renew a partition lease. KEYS[1] lease key; ARGV[1] worker id, ARGV[2] lease ms,
-- ARGV[3] 'renew' or 'take' or 'release'. Returns 1 when the caller holds the lease after the call.
local holder = redis.call('GET', KEYS[1])
if ARGV[3] == 'release' then
  if holder == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 0
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if (not holder) and ARGV[3] == 'take' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
