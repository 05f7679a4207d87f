-- Remove one item from learned session histories of one partition (Store.forget_item), and
-- bump the partition's admin epoch in the same step: a worker batch that read any of these
-- histories before cannot commit them back (commit.lua and intent.lua check the epoch).
-- KEYS[1] the partition's admin epoch, KEYS[2..] histories; ARGV[1] the item hash (8 bytes).
-- Returns how many histories held the item.
redis.call('INCR', KEYS[1])
local item = ARGV[1]
local scrubbed = 0
for k = 2, #KEYS do
  local history = redis.call('GET', KEYS[k])
  if history then
    local kept = {}
    for o = 1, #history, 16 do
      local entry = string.sub(history, o, o + 15)
      if string.sub(entry, 1, 8) ~= item then kept[#kept + 1] = entry end
    end
    local rewritten = table.concat(kept)
    if #rewritten ~= #history then
      redis.call('SET', KEYS[k], rewritten, 'KEEPTTL')
      scrubbed = scrubbed + 1
    end
  end
end
return scrubbed
