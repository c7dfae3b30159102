-- Take a unique lock and push its job, atomically: no lock without a job, no job without a lock.
--
-- The lock is rusty-sidekiq's key, taken with the same SET NX, so a lock either side took stops
-- the other's duplicate. Its value is the owner's jid (rusty-sidekiq writes ""): a job that
-- finds its own jid there is being published again (same task id), not duplicated, so it goes
-- through, and its lock is stretched if this push needs it longer (a schedule).
--
-- KEYS[1]  the lock, sidekiq:unique:<queue>:<class>:<sha256 hex>
-- KEYS[2]  the queues SET
-- KEYS[3]  the queue list, or the schedule ZSET when ARGV[5] is a score
-- ARGV[1]  the owner's jid
-- ARGV[2]  the lock's lifetime, whole seconds
-- ARGV[3]  the job JSON
-- ARGV[4]  the queue name
-- ARGV[5]  '' to enqueue now, or the epoch seconds to schedule at
-- Returns {1} when pushed, {0, owner, seconds left} for a duplicate (nothing written).
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  local owner = redis.call('GET', KEYS[1])
  if owner ~= ARGV[1] then
    return {0, owner, redis.call('TTL', KEYS[1])}
  end
  if redis.call('TTL', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('EXPIRE', KEYS[1], ARGV[2])
  end
end
if ARGV[5] == '' then
  redis.call('SADD', KEYS[2], ARGV[4])
  redis.call('LPUSH', KEYS[3], ARGV[3])
else
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[3])
end
return {1}
