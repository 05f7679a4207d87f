-- Append entries to one partition stream, all or nothing (the producer path of Store.append).
-- KEYS[1] stream; ARGV: per entry, its field count n, then n field/value pairs.
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
