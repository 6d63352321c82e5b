-- typing. ARGV: 1 P, 2 id, 3 room, 4 epoch, 5 q, 6 ack, 7 'true' | 'false',
-- 8 log length, 9 deadline
-- Returns {'ok'} | {'late'} | {'stale'} | {'gone'}
local id, r, e = ARGV[2], ARGV[3], ARGV[4]
if now_ms() > tonumber(ARGV[9]) then return {'late'} end
local meta = key('room', r)
local m = redis.call('HMGET', meta, 'epoch', 'seq')
if m[1] ~= e then return {'stale'} end
local uj = redis.call('HGET', key('users', r), id)
if not uj then return {'gone'} end
local k = redis.call('HINCRBY', meta, 'k', 1)
local ev = event('t', r, e, m[2], k, id, ARGV[5], ARGV[6], uj, ARGV[7], '', '')
emit(r, m[2], k, ev, redis.call('HKEYS', key('nodesin', r)), ARGV[8], '')
return {'ok'}
