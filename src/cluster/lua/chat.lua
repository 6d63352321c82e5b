-- chatMessage. ARGV: 1 P, 2 id, 3 room, 4 epoch, 5 q, 6 ack ('' = none),
-- 7 data before seq, 8 data after seq, 9 history limit, 10 log length, 11 deadline
-- Returns {'ok', seq} | {'late'} | {'stale'} (room lost or recreated) | {'gone'} (not a member)
local id, r, e = ARGV[2], ARGV[3], ARGV[4]
if now_ms() > tonumber(ARGV[11]) then return {'late'} end
local meta = key('room', r)
local m = redis.call('HMGET', meta, 'epoch', 'k')
if m[1] ~= e then return {'stale'} end
if redis.call('HEXISTS', key('users', r), id) == 0 then return {'gone'} end
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local data = ARGV[7] .. seq .. ARGV[8]
local limit = tonumber(ARGV[9])
if limit > 0 then
  local h = key('hist', r)
  if redis.call('RPUSH', h, data) > limit then redis.call('LPOP', h) end
end
local ev = event('m', r, e, seq, m[2], id, ARGV[5], ARGV[6], data, '', '', '')
emit(r, seq, m[2], ev, redis.call('HKEYS', key('nodesin', r)), ARGV[10], '')
return {'ok', seq}
