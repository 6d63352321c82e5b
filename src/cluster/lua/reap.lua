-- Takes the members of dead nodes out of their rooms, userLeft to the rest;
-- with ARGV[5] a node id, that node's members whatever its heartbeat (a node
-- shutting down drops itself). At most ARGV[4] members a call: call again
-- while it returns the batch size. ARGV: 1 P, 2 this node, 3 log length, 4 batch, 5 node or ''
local budget, done = tonumber(ARGV[4]), 0
local dead = {ARGV[5]}
if ARGV[5] == '' then
  dead = redis.call('ZRANGEBYSCORE', key('x', 'nodes'), '-inf', now_ms())
end
for _, d in ipairs(dead) do
  if d ~= ARGV[2] or ARGV[5] ~= '' then
    local m = redis.call('HGETALL', key('node', d))
    for i = 1, #m, 2 do
      if done >= budget then return done end
      if not leave_room(m[i + 1], '', m[i], d, 's', '', '', ARGV[3], d) then
        redis.call('HDEL', key('node', d), m[i])
      end
      done = done + 1
    end
    redis.call('DEL', key('node', d))
    redis.call('ZREM', key('x', 'nodes'), d)
  end
end
return done
