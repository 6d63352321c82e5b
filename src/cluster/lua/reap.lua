-- Takes the members of dead nodes out of their rooms, userLeft to the rest;
-- with ARGV[5] a node id, that node's members whatever its heartbeat (a node
-- shutting down, or told it was reaped, drops itself). A dead node first moves
-- from the live list to P:x:reaping, so that if it comes back while its members
-- are being taken out, its heartbeat hears 'reaped' (see heartbeat.lua). At
-- most ARGV[4] members a call: call again while it returns the batch size.
-- ARGV: 1 P, 2 this node, 3 log length, 4 batch, 5 node or '', 6 deadline
-- Returns how many members it took out, or -1 past its deadline (nothing done).
if now_ms() > tonumber(ARGV[6]) then return -1 end
local budget, done = tonumber(ARGV[4]), 0
local dead
if ARGV[5] ~= '' then
  redis.call('SADD', key('x', 'reaping'), ARGV[5])
  redis.call('ZREM', key('x', 'nodes'), ARGV[5])
  dead = {ARGV[5]}
else
  for _, d in ipairs(redis.call('ZRANGEBYSCORE', key('x', 'nodes'), '-inf', now_ms())) do
    if d ~= ARGV[2] then
      redis.call('SADD', key('x', 'reaping'), d)
      redis.call('ZREM', key('x', 'nodes'), d)
    end
  end
  dead = redis.call('SMEMBERS', key('x', 'reaping'))
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
    redis.call('SREM', key('x', 'reaping'), d)
  end
end
return done
