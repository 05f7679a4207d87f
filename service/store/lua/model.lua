-- Write the shared model record (service/core/modelparams.py) if nobody wrote it since the
-- writer read it: KEYS[1] the record (a hash); ARGV[1] the version the writer read, ARGV[2..]
-- field, value pairs. Returns {1, new version} when written, {0, current version} when the
-- record moved on (the writer reads it again and retries: two admins or a tuning run and an
-- admin never lose each other's change).
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then
  return {0, current}
end
local fields = {'version', current + 1}
for i = 2, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
return {1, current + 1}
