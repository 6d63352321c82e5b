-- chatMessage. ARGV: 1 P, 2 id, 3 room, 4 epoch, 5 q, 6 ack ('' = none),
-- 7 body (<ts>\t<text as JSON>, event.rs chat_body), 8 history limit,
-- 9 log length, 10 deadline
-- Returns {'ok', seq} | {'late'} | {'stale'} (room lost or recreated) | {'gone'} (not a member)
local id, r, e = ARGV[2], ARGV[3], ARGV[4]
if now_ms() > tonumber(ARGV[10]) then return {'late'} end
local meta = key('room', r)
local m = redis.call('HMGET', meta, 'epoch', 'k')
if m[1] ~= e then return {'stale'} end
local uj = redis.call('HGET', key('users', r), id)
if not uj then return {'gone'} end
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local limit = tonumber(ARGV[8])
if limit > 0 then
  local h = key('hist', r)
  if redis.call('RPUSH', h, table.concat({seq, id, uj, ARGV[7]}, '\t')) > limit then
    redis.call('LPOP', h)
  end
end
local ev = event('m', r, e, seq, m[2], id, ARGV[5], ARGV[6], uj, ARGV[7], '', '')
emit(r, seq, m[2], ev, redis.call('HKEYS', key('nodesin', r)), ARGV[9], '')
return {'ok', seq}
