-- Move due jobs from a sorted set (schedule or retry) to their queue lists, atomically.
--
-- The caller reads due members with ZRANGE ... BYSCORE, rewrites each job in Python (setting
-- enqueued_at without touching any other key) and passes the results here. A member moves only
-- if this call is the one that removes it from the set, so any number of pollers, Ruby's
-- included (they pop with the same ZREM), promote each job exactly once.
--
-- KEYS[1]       the sorted set
-- KEYS[2]       the queues SET
-- KEYS[3..n]    the queue list of each job, in ARGV order
-- ARGV          triples: member, queue name, job JSON to push
-- Returns the number of jobs moved.
local moved = 0
for i = 1, #ARGV, 3 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('SADD', KEYS[2], ARGV[i + 1])
    redis.call('LPUSH', KEYS[3 + (i - 1) / 3], ARGV[i + 2])
    moved = moved + 1
  end
end
return moved
