-- Record what answers given to sessions listed (service/core/feedback.py, answer_record), a
-- batch of them in one partition and hour (a serve process gathers the answers of one turn of
-- its event loop: one call instead of one per answer), each within two bounds: the client
-- address' share (one address cannot weigh more than that many answers, whatever sessions it
-- invents) and the partition's budget of bytes. Past the budget the hour is marked flooded and
-- the worker counts none of its answers: a flood can erase an hour's feedback, not select
-- whose counts.
-- KEYS[1] the partition's bytes this hour, KEYS[2] the flood mark of the hour, then for each
-- answer: its record, and the client's answers this hour in the partition
-- ARGV[1] a record's lifetime (s), ARGV[2] the hour's budget (bytes), ARGV[3] the counters'
-- lifetime (s), then for each answer: its record, the bytes it is charged (its size in Redis)
-- and the client's share (answers)
-- Returns, for each answer, 1 when recorded, 0 when the client's share was spent, -1 when the
-- budget was.
local out = {}
local answers = (#KEYS - 2) / 2
for n = 1, answers do
  local record_key, client_key = KEYS[1 + 2 * n], KEYS[2 + 2 * n]
  local record, charge, share = ARGV[1 + 3 * n], ARGV[2 + 3 * n], tonumber(ARGV[3 + 3 * n])
  local mine = redis.call('INCR', client_key)
  if mine == 1 then redis.call('EXPIRE', client_key, ARGV[3]) end
  if mine > share then
    out[n] = 0
  else
    local used = redis.call('INCRBY', KEYS[1], charge)
    if used == tonumber(charge) then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
    if used > tonumber(ARGV[2]) then
      redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
      out[n] = -1
    else
      redis.call('SET', record_key, record, 'EX', ARGV[1])
      out[n] = 1
    end
  end
end
return out
