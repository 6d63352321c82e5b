-- What one node-local room missed after position (seq, k): after a lost pub/sub
-- message or a new subscriber connection.
-- ARGV: 1 P, 2 room, 3 epoch, 4 seq, 5 k, 6 max, 7 a fresh generation
-- Returns {'lost'} (room gone or recreated) | {'behind'} | {'ok', seq, k, entries}
--
-- 'behind': the room stands before what the node applied, so Redis went back
-- in time (an older snapshot, a lagging replica): no room can be trusted. As
-- in heartbeat.lua, every room is dropped and the generation changes, so every
-- node resets its rooms at its next heartbeat.
local m = redis.call('HMGET', key('room', ARGV[2]), 'epoch', 'seq', 'k')
if m[1] ~= ARGV[3] then return {'lost'} end
if tonumber(m[2]) < tonumber(ARGV[4]) or tonumber(m[3]) < tonumber(ARGV[5]) then
  forget_rooms()
  redis.call('SET', key('x', 'gen'), ARGV[7])
  return {'behind'}
end
if m[2] == ARGV[4] and m[3] == ARGV[5] then return {'ok', m[2], m[3], {}} end
return {'ok', m[2], m[3], redis.call('XRANGE', key('log', ARGV[2]),
  '(' .. ARGV[4] .. '-' .. ARGV[5], '+', 'COUNT', ARGV[6])}
