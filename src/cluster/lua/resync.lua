-- What one node-local room missed after position (seq, k): after a lost pub/sub
-- message or a new subscriber connection. ARGV: 1 P, 2 room, 3 epoch, 4 seq, 5 k, 6 max
-- Returns {'lost'} (room gone or recreated) | {'ok', seq, k, entries}
local m = redis.call('HMGET', key('room', ARGV[2]), 'epoch', 'seq', 'k')
if m[1] ~= ARGV[3] then return {'lost'} end
if m[2] == ARGV[4] and m[3] == ARGV[5] then return {'ok', m[2], m[3], {}} end
return {'ok', m[2], m[3], redis.call('XRANGE', key('log', ARGV[2]),
  '(' .. ARGV[4] .. '-' .. ARGV[5], '+', 'COUNT', ARGV[6])}
