-- Move one member from a sorted set (schedule or retry) to the dead set, atomically, as
-- Sidekiq's morgue does: add, then trim by age and by count.
--
-- KEYS[1]  the sorted set the member is in
-- KEYS[2]  the dead set
-- ARGV[1]  the member
-- ARGV[2]  the dead entry to add (the member itself, or the job rewritten with its reason)
-- ARGV[3]  now, float epoch seconds (the dead score)
-- ARGV[4]  oldest score kept (now - dead_timeout_in_seconds)
-- ARGV[5]  how many dead jobs to keep at most (dead_max_jobs)
-- Returns 1 if this call moved the member, 0 if somebody else took it first.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[5]))
return 1
