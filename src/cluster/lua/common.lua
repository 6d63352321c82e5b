-- Prepended to every script (scripts.rs: concat!(common.lua, <script>.lua)).
-- ARGV[1] is the cluster prefix P. Keys, all of them P:<kind>:<name>, so no
-- two rooms' keys collide whatever the room name (<kind> holds no colon):
--   P:room:<room>     HASH  epoch (incarnation), seq (chat messages), k (other
--                           events), j (join ordinal)
--   P:users:<room>    HASH  id -> username as JSON
--   P:order:<room>    ZSET  id -> join ordinal (joined.users in join order)
--   P:nodesin:<room>  HASH  node -> how many of the room's members it holds
--   P:hist:<room>     LIST  chat records <seq>\t<id>\t<name>\t<ts>\t<text>, oldest
--                           first, at most --history
--   P:log:<room>      STREAM every event, id "<seq>-<k>", field e; ~LOGLEN kept
--   P:node:<node>     HASH  id -> room: the node's members (for reaping)
--   P:x:rooms         HASH  room -> members in the cluster (/api/rooms)
--   P:x:nodes         ZSET  node -> heartbeat deadline, ms on Redis's clock
--   P:x:reaping       SET   dead nodes whose members are being taken out
--   P:x:gen           STRING the data set's generation (gone: Redis lost its data)
--   P:x:clock         STRING raised by every heartbeat (lower than seen: Redis
--                           went back in time)
-- Channel P:to:<node>: everything node <node> must deliver, in Redis's order.
--
-- Rules every script keeps: all checks (reads) before the first write, since
-- Redis does not roll a script back (a write followed by an error would burn
-- a seq nobody sees); Redis's clock (TIME), never a node's; and every script
-- that changes a room ends with exactly one event for it, so that positions
-- stay contiguous.
local P = ARGV[1]
local function key(kind, name) return P .. ':' .. kind .. ':' .. name end

local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- An event: 13 fields joined by "\n" (see event.rs). Scripts publish fields and
-- the values they are handed, never event JSON: a node builds the events.
-- Its position in the room is (seq, k): a chat message raises seq, any other event k.
-- resumed (an own join's only, '' elsewhere, so optional here) goes before
-- hist, which holds newlines and so must come last.
local function event(kind, r, epoch, seq, k, origin, q, ack, name, body, users, hist, resumed)
  return table.concat({kind, r, epoch, seq, k, origin, q, ack, name, body, users,
    resumed or '', hist}, '\n')
end

-- Logs an event and publishes it to every node with members in the room but `skip`.
local function emit(r, seq, k, ev, nodes, loglen, skip)
  redis.call('XADD', key('log', r), 'MAXLEN', '~', loglen, seq .. '-' .. k, 'e', ev)
  for _, n in ipairs(nodes) do
    if n ~= skip then redis.call('PUBLISH', key('to', n), ev) end
  end
end

-- Takes member `id` (of node `node`) out of room r and tells the room.
-- e: the epoch the caller believes in ('' = any). kind: 'l' (leaveRoom: the
-- leaver's node answers `left`) or 's' (switch, disconnect, eviction, reaping).
-- False when id is not (or no longer) a member: then nothing happens, so a
-- member leaves exactly once, whoever asks (its node, or a reaper).
local function leave_room(r, e, id, node, kind, q, ack, loglen, skip)
  local meta = key('room', r)
  local m = redis.call('HMGET', meta, 'epoch', 'seq')
  if not m[1] or (e ~= '' and m[1] ~= e) then return false end
  local uj = redis.call('HGET', key('users', r), id)
  if not uj then return false end
  local nodes = redis.call('HKEYS', key('nodesin', r)) -- before the leaver's node drops out
  redis.call('HDEL', key('users', r), id)
  redis.call('ZREM', key('order', r), id)
  if redis.call('HINCRBY', key('nodesin', r), node, -1) <= 0 then
    redis.call('HDEL', key('nodesin', r), node)
  end
  if redis.call('HGET', key('node', node), id) == r then
    redis.call('HDEL', key('node', node), id)
  end
  local k = redis.call('HINCRBY', meta, 'k', 1)
  local ev = event(kind, r, m[1], m[2], k, id, q, ack, uj, '', '', '')
  if redis.call('HINCRBY', key('x', 'rooms'), r, -1) <= 0 then
    -- the last member anywhere: the room goes, seq and history with it
    redis.call('HDEL', key('x', 'rooms'), r)
    redis.call('DEL', meta, key('users', r), key('order', r), key('nodesin', r),
      key('hist', r), key('log', r))
    for _, n in ipairs(nodes) do
      if n ~= skip then redis.call('PUBLISH', key('to', n), ev) end
    end
  else
    emit(r, m[2], k, ev, nodes, loglen, skip)
  end
  return true
end

-- Drops every room and every node's member list: Redis went back in time and
-- no room's state can be trusted (heartbeat.lua). Rooms are found through
-- P:x:rooms, which lists every room with a member, and nodes through the live
-- and reaping lists.
local function forget_rooms()
  for _, r in ipairs(redis.call('HKEYS', key('x', 'rooms'))) do
    redis.call('DEL', key('room', r), key('users', r), key('order', r), key('nodesin', r),
      key('hist', r), key('log', r))
  end
  for _, n in ipairs(redis.call('ZRANGE', key('x', 'nodes'), 0, -1)) do
    redis.call('DEL', key('node', n))
  end
  for _, n in ipairs(redis.call('SMEMBERS', key('x', 'reaping'))) do
    redis.call('DEL', key('node', n))
  end
  redis.call('DEL', key('x', 'rooms'), key('x', 'reaping'))
end
