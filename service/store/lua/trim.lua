-- Trim a partition stream below the oldest entry that some consumer group has not acknowledged
-- (XTRIM alone ignores pending lists). KEYS[1] stream. Returns the number of entries removed.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
--[[ops]]
local floor = nil
for _, g in ipairs(groups) do
  local name, delivered
  for f = 1, #g, 2 do
    if g[f] == 'name' then name = g[f + 1] end
    if g[f] == 'last-delivered-id' then delivered = g[f + 1] end
  end
  local pending = redis.call('XPENDING', KEYS[1], name)
  local keep = delivered
  if tonumber(pending[1]) > 0 then keep = pending[2] end
  if floor == nil or id_less(keep, floor) then floor = keep end
end
return redis.call('XTRIM', KEYS[1], 'MINID', floor)
