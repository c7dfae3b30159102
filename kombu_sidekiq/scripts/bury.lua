-- Move one member from a sorted set (schedule or retry) to the dead set, atomically, as
-- Sidekiq's morgue does: add, then trim by age and by count.
--
-- Redis keeps a script's earlier writes when a later command fails, so the dead entry is added
-- first, under pcall, and the member leaves its set only once the add succeeded: a dead key that
-- refuses it (a key of another type, out of memory, a read-only replica) leaves the member where
-- it is and the error goes back to the caller. Never in neither set; never in both.
--
-- KEYS[1]  the sorted set the member is in
-- KEYS[2]  the dead set
-- ARGV[1]  the member
-- ARGV[2]  the dead entry to add (the member itself, or the job rewritten with its reason)
-- ARGV[3]  now, float epoch seconds (the dead score)
-- ARGV[4]  oldest score kept (now - dead_timeout_in_seconds)
-- ARGV[5]  how many dead jobs to keep at most (dead_max_jobs)
-- Returns 1 if this call moved the member, 0 if somebody else took it first; an error reply
-- "<dead key>: <error>" if the dead set refused it (then nothing changed).
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
local added = redis.pcall('ZADD', KEYS[2], ARGV[3], ARGV[2])
if type(added) == 'table' and added.err then
  return redis.error_reply(KEYS[2] .. ': ' .. added.err)
end
-- Killing a dead entry again only gives it a new score: the ZADD above was that move.
if KEYS[1] ~= KEYS[2] or ARGV[1] ~= ARGV[2] then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[5]))
return 1
