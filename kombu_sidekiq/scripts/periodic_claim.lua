-- Claim one fire of a periodic entry and enqueue its job, atomically.
--
-- A compare-and-set on the score the caller read: the claim wins only if the entry still has
-- that score, and then moves it to the next fire in the same step. Every other claimer of the
-- same fire (another beat, whatever its clock says) finds the score moved and enqueues nothing;
-- and a crash can never leave a moved score without its job, or a job without the move.
--
-- KEYS[1]  the periodic ZSET
-- KEYS[2]  the queues SET
-- KEYS[3]  the queue list of the job
-- ARGV[1]  the member, as read (never re-encoded: the member is the entry's identity)
-- ARGV[2]  the score the caller read
-- ARGV[3]  the next score ('+inf' when the cron has no later fire)
-- ARGV[4]  the queue name
-- ARGV[5]  the job JSON
-- Returns 1 if this call claimed the fire, 0 if somebody else did (or the entry is gone).
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('LPUSH', KEYS[3], ARGV[5])
return 1
