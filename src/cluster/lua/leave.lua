-- leaveRoom (kind 'l') and disconnect or eviction (kind 's').
-- ARGV: 1 P, 2 node, 3 id, 4 room, 5 epoch, 6 kind, 7 q, 8 ack, 9 log length, 10 deadline
-- Returns {'ok'} | {'gone'} (already out: reaped, or the room was lost) | {'late'}
if now_ms() > tonumber(ARGV[10]) then return {'late'} end
if leave_room(ARGV[4], ARGV[5], ARGV[3], ARGV[2], ARGV[6], ARGV[7], ARGV[8], ARGV[9], '') then
  return {'ok'}
end
return {'gone'}
