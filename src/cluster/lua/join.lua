-- joinRoom. ARGV: 1 P, 2 node, 3 id, 4 username JSON, 5 room, 6 room JSON,
-- 7 epoch if the room is new, 8 log length, 9 q, 10 ack ('' = none),
-- 11 current room ('' = none), 12 its epoch, 13 deadline (ms, Redis clock)
-- Returns {'ok', epoch, left} | {'late'} | {'nonode'}; left is '0' when the
-- current room no longer had this member (its state was lost: the node
-- checks that room). Publishes the event to the room's other nodes, and to
-- the joiner's node the same event in capitals with the snapshot: users (join
-- order, joiner included) and history, read in the same atomic step, so its
-- place in that node's stream is the snapshot's watermark.
local node, id, uj, r, rj = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local loglen, q, ack = ARGV[8], ARGV[9], ARGV[10]
if now_ms() > tonumber(ARGV[13]) then return {'late'} end
if not redis.call('ZSCORE', key('x', 'nodes'), node) then return {'nonode'} end

local left = '1'
if ARGV[11] ~= '' and ARGV[11] ~= r then
  if not leave_room(ARGV[11], ARGV[12], id, node, 's', '', '', loglen, '') then left = '0' end
end
local meta = key('room', r)
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[7]
  redis.call('HSET', meta, 'epoch', epoch, 'rj', rj, 'seq', 0, 'k', 0, 'j', 0)
end
local pres = '{"room":' .. rj .. ',"id":"' .. id .. '","username":' .. uj .. '}'
local old = redis.call('HGET', key('users', r), id)
local kind, data, olddata = 'j', pres, ''
if not old then
  redis.call('HSET', key('users', r), id, uj)
  redis.call('ZADD', key('order', r), redis.call('HINCRBY', meta, 'j', 1), id)
  redis.call('HINCRBY', key('nodesin', r), node, 1)
  redis.call('HINCRBY', key('x', 'rooms'), r, 1)
  redis.call('HSET', key('node', node), id, r)
elseif old ~= uj then
  redis.call('HSET', key('users', r), id, uj)
  kind, olddata = 'r', '{"room":' .. rj .. ',"id":"' .. id .. '","username":' .. old .. '}'
else
  kind, data = 'n', ''
end
local k = redis.call('HINCRBY', meta, 'k', 1)
local seq = redis.call('HGET', meta, 'seq')
local ev = event(kind, r, epoch, seq, k, id, q, ack, data, olddata, '', '')

local ids = redis.call('ZRANGE', key('order', r), 0, -1)
local all = redis.call('HGETALL', key('users', r))
local name = {}
for i = 1, #all, 2 do name[all[i]] = all[i + 1] end
local users = {}
for i, uid in ipairs(ids) do
  users[i] = '{"id":"' .. uid .. '","username":' .. name[uid] .. '}'
end
-- The joiner's own copy always carries its presence, which holds the name
-- its `joined` answers with (kind 'n' tells the others nothing).
local own = event(string.upper(kind), r, epoch, seq, k, id, q, ack, pres, olddata,
  '[' .. table.concat(users, ',') .. ']',
  '[' .. table.concat(redis.call('LRANGE', key('hist', r), 0, -1), ',') .. ']')

emit(r, seq, k, ev, redis.call('HKEYS', key('nodesin', r)), loglen, node)
redis.call('PUBLISH', key('to', node), own)
return {'ok', epoch, left}
