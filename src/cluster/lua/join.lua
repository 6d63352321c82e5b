-- joinRoom. ARGV: 1 P, 2 node, 3 id, 4 username JSON, 5 room,
-- 6 epoch if the room is new, 7 log length, 8 q, 9 ack ('' = none),
-- 10 current room ('' = none), 11 its epoch, 12 deadline (ms, Redis clock),
-- 13 since ('' = not a resume), 14 the epoch since was seen in
-- Returns {'ok', epoch, left} | {'late'} | {'nonode'}; left is '0' when the
-- current room no longer had this member (its state was lost: the node
-- checks that room). Publishes the event to the room's other nodes, and to
-- the joiner's node the same event in capitals with the snapshot: users (join
-- order, joiner included) and history, read in the same atomic step, so its
-- place in that node's stream is the snapshot's watermark. With a since, the
-- snapshot's history is every record after it and resumed is '1' when the
-- epoch is the room's and the list still holds them all (a since beyond the
-- last seq is not a resume); else the whole list and resumed '0'.
local node, id, uj, r = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local loglen, q, ack = ARGV[7], ARGV[8], ARGV[9]
if now_ms() > tonumber(ARGV[12]) then return {'late'} end
if not redis.call('ZSCORE', key('x', 'nodes'), node) then return {'nonode'} end

local left = '1'
if ARGV[10] ~= '' and ARGV[10] ~= r then
  if not leave_room(ARGV[10], ARGV[11], id, node, 's', '', '', loglen, '') then left = '0' end
end
local meta = key('room', r)
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0, 'k', 0, 'j', 0)
end
local old = redis.call('HGET', key('users', r), id)
-- j: a new member; r: a rename (body: the old name); n: the same name again,
-- nothing for the others.
local kind, oldname = 'j', ''
if not old then
  redis.call('HSET', key('users', r), id, uj)
  redis.call('ZADD', key('order', r), redis.call('HINCRBY', meta, 'j', 1), id)
  redis.call('HINCRBY', key('nodesin', r), node, 1)
  redis.call('HINCRBY', key('x', 'rooms'), r, 1)
  redis.call('HSET', key('node', node), id, r)
elseif old ~= uj then
  redis.call('HSET', key('users', r), id, uj)
  kind, oldname = 'r', old
else
  kind = 'n'
end
local k = redis.call('HINCRBY', meta, 'k', 1)
local seq = redis.call('HGET', meta, 'seq')
local ev = event(kind, r, epoch, seq, k, id, q, ack, uj, oldname, '', '')

local hist, resumed, records = key('hist', r), '', nil
if ARGV[13] ~= '' then
  local since, last = tonumber(ARGV[13]), tonumber(seq)
  resumed = '0'
  if ARGV[14] == epoch and since <= last then
    if since == last then
      records, resumed = {}, '1'
    else
      -- the list holds seqs first..last, one record each, oldest first
      local oldest = redis.call('LINDEX', hist, 0)
      local first = oldest and tonumber(string.match(oldest, '^(%d+)\t'))
      if first and since >= first - 1 then
        records, resumed = redis.call('LRANGE', hist, since - first + 1, -1), '1'
      end
    end
  end
end
records = records or redis.call('LRANGE', hist, 0, -1)

local ids = redis.call('ZRANGE', key('order', r), 0, -1)
local users = {}
for i, uid in ipairs(ids) do
  users[2 * i - 1] = uid
  users[2 * i] = redis.call('HGET', key('users', r), uid)
end
local own = event(string.upper(kind), r, epoch, seq, k, id, q, ack, uj, oldname,
  table.concat(users, '\t'), table.concat(records, '\n'), resumed)

emit(r, seq, k, ev, redis.call('HKEYS', key('nodesin', r)), loglen, node)
redis.call('PUBLISH', key('to', node), own)
return {'ok', epoch, left}
