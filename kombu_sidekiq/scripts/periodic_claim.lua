-- Claim one fire of a periodic entry and enqueue its job, atomically.
--
-- A compare-and-set on the score the caller read: the claim wins only if the entry still has
-- that score, and then moves it to the next fire in the same step. Every other claimer of the
-- same fire (another beat, whatever its clock says) finds the score moved and enqueues nothing;
-- and a crash can never leave a moved score without its job, or a job without the move.
--
-- Redis does not roll a script back: an error reply half way keeps the writes made before it.
-- So the keys written are checked first (a 'queues' that is no set, a queue key that is no
-- list would fail SADD or LPUSH after the ZADD, moving the score without the job), and the
-- script refuses before writing anything; the caller leaves the entry for the next poll.
--
-- KEYS[1]  the periodic ZSET
-- KEYS[2]  the queues SET
-- KEYS[3]  the queue list of the job
-- ARGV[1]  the member, as read (never re-encoded: the member is the entry's identity)
-- ARGV[2]  the score the caller read
-- ARGV[3]  the next score ('+inf' when the cron has no later fire)
-- ARGV[4]  the queue name
-- ARGV[5]  the job JSON
-- Returns 1 if this call claimed the fire, 0 if somebody else did (or the entry is gone);
-- an error reply, with nothing written, if a key it would write holds another type.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then
  return 0
end
for _, check in ipairs({{KEYS[2], 'set'}, {KEYS[3], 'list'}}) do
  local found = redis.call('TYPE', check[1]).ok
  if found ~= check[2] and found ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. check[1] .. ' holds a ' .. found ..
      ', not a ' .. check[2] .. ': fire not claimed, nothing written')
  end
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('LPUSH', KEYS[3], ARGV[5])
return 1
