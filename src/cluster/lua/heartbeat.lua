-- Every tick from every node. ARGV: 1 P, 2 node, 3 ttl ms,
-- 4 the generation this node knows ('' at startup), 5 a fresh generation
-- Returns {status, generation, Redis time in ms}. status: 'ok'; 'lost' (Redis
-- came back without our data); 'reaped' (the others took us for dead);
-- 'taken' (startup only: another live node drew the same tag; draw again).
local node, known = ARGV[2], ARGV[4]
local now = now_ms()
if known == '' and redis.call('ZSCORE', key('x', 'nodes'), node) then
  return {'taken', '', tostring(now)}
end
local g = redis.call('GET', key('x', 'gen'))
local status = 'ok'
if not g then
  g = ARGV[5]
  redis.call('SET', key('x', 'gen'), g)
  if known ~= '' then status = 'lost' end
elseif known ~= '' and g ~= known then
  status = 'lost'
elseif known ~= '' and not redis.call('ZSCORE', key('x', 'nodes'), node) then
  status = 'reaped'
end
redis.call('ZADD', key('x', 'nodes'), now + tonumber(ARGV[3]), node)
return {status, g, tostring(now)}
