-- Put an in-flight job back in its queue: to the head (RPUSH, where BRPOP takes next, as
-- sidekiq.rb requeues at shutdown) or, for a reject with requeue, to the tail (LPUSH).
-- Both steps in one script, so the job is never in both places nor in neither.
--
-- KEYS[1]  the in-flight list
-- KEYS[2]  the queue list
-- ARGV[1]  the job, byte for byte as it was fetched
-- ARGV[2]  "head" or "tail"
-- Returns 1 if the job was in flight and moved, 0 if it was not there (already acknowledged
-- or recovered by somebody else).
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then
  return 0
end
if ARGV[2] == 'tail' then
  redis.call('LPUSH', KEYS[2], ARGV[1])
else
  redis.call('RPUSH', KEYS[2], ARGV[1])
end
return 1
