-- Every tick from every node. ARGV: 1 P, 2 node, 3 ttl ms,
-- 4 the generation this node knows ('' at startup), 5 a fresh generation,
-- 6 the highest clock this node has seen ('' at startup)
-- Returns {status, generation, Redis time in ms, clock}. status: 'ok'; 'lost'
-- (Redis came back without our data, or with older data); 'reaped' (the
-- others took us for dead, or are taking it); 'taken' (startup only: another
-- live node drew the same tag; draw again).
--
-- The clock rises by one at every heartbeat of every node. Redis answering
-- with a clock below one a node has seen has gone back in time (restarted
-- from an older snapshot, a lagging replica promoted, an AOF that lost its
-- last second): every room may be behind what the nodes delivered. Its rooms
-- are dropped and the generation changes, so every node resets its rooms
-- (their members get 1012) instead of taking new events for repeats.
local node, known = ARGV[2], ARGV[4]
local now = now_ms()
if known == '' and redis.call('ZSCORE', key('x', 'nodes'), node) then
  return {'taken', '', tostring(now), '0'}
end
local g = redis.call('GET', key('x', 'gen'))
local clock = tonumber(redis.call('GET', key('x', 'clock')) or '0')
local status = 'ok'
if not g then
  g = ARGV[5]
  redis.call('SET', key('x', 'gen'), g)
  if known ~= '' then status = 'lost' end
elseif known ~= '' and g ~= known then
  status = 'lost'
elseif ARGV[6] ~= '' and clock < tonumber(ARGV[6]) then
  forget_rooms()
  g = ARGV[5]
  redis.call('SET', key('x', 'gen'), g)
  status = 'lost'
elseif known ~= '' and (not redis.call('ZSCORE', key('x', 'nodes'), node)
    or redis.call('SISMEMBER', key('x', 'reaping'), node) == 1) then
  status = 'reaped'
end
if status ~= 'reaped' then
  redis.call('ZADD', key('x', 'nodes'), now + tonumber(ARGV[3]), node)
end
clock = redis.call('INCR', key('x', 'clock'))
return {status, g, tostring(now), tostring(clock)}
