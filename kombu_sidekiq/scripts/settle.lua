-- Settle one in-flight job otherwise than by acknowledging it: back to its queue (the head,
-- where BRPOP takes next, as sidekiq.rb requeues at shutdown; or the tail, behind every waiting
-- job), into a sorted set (retry or schedule, with a score), or into the dead set (trimmed as
-- Sidekiq's morgue is). One step: the job is never in both places nor in neither.
--
-- The destination is written before the job leaves flight, and the write runs under pcall: a
-- destination that refuses it (a key of another type, out of memory) leaves the job in flight
-- and the error is raised to the caller, which then must not acknowledge the job. Redis keeps
-- a script's earlier writes when a later command fails, so the order matters.
--
-- KEYS[1]  the worker's in-flight HASH holding the job
-- KEYS[2]  the destination: a queue list or a sorted set
-- ARGV[1]  the job's field number in the in-flight hash
-- ARGV[2]  what to store: the job byte for byte, or rewritten (failure fields...)
-- ARGV[3]  "head", "tail", "zset" or "dead"
-- ARGV[4]  the score, for "zset" and "dead" (float epoch seconds)
-- ARGV[5]  "dead": the oldest score kept (now - dead_timeout_in_seconds)
-- ARGV[6]  "dead": how many dead jobs to keep at most (dead_max_jobs)
-- Returns 1 if the job was in flight and moved, 0 if it was no longer there (recovered by
-- another worker after this one's lease expired, or settled already by a call sent twice):
-- then nothing is stored twice.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local mode = ARGV[3]
local reply
if mode == 'head' then
  reply = redis.pcall('RPUSH', KEYS[2], ARGV[2])
elseif mode == 'tail' then
  reply = redis.pcall('LPUSH', KEYS[2], ARGV[2])
else
  reply = redis.pcall('ZADD', KEYS[2], ARGV[4], ARGV[2])
end
if type(reply) == 'table' and reply.err then
  return redis.error_reply(KEYS[2] .. ': ' .. reply.err)
end
redis.call('HDEL', KEYS[1], ARGV[1])
if mode == 'dead' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[6]))
end
return 1
