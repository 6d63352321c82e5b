-- /api/rooms: every room of the cluster and its member count. ARGV: 1 P
return redis.call('HGETALL', key('x', 'rooms'))
