-- Take a unique lock and push its job, atomically: no lock without a job, no job without a lock.
--
-- The lock is rusty-sidekiq's key, taken with the same SET NX, so a lock either side took stops
-- the other's duplicate. Its value is the owner's jid (rusty-sidekiq writes ""). A job that
-- finds its own jid there is being sent again: a retry after a lost reply (kombu's publish
-- retry, redis-py's), or the same task id published again. If the job is still where this
-- push would put it, that copy is this job and nothing is written; if it is not (a worker took
-- it, or it never landed), it is pushed. Either way the lock is stretched if this push needs it
-- longer (a schedule). ARGV[6] = '1' (the jid is in doubt: an earlier attempt lost its reply)
-- looks for the job first, whoever holds the lock now: the lock may have expired since, or
-- passed to another job, while our earlier copy waits in the queue.
--
-- The lookup is push_once.lua's (the newest ARGV[7] items of the list, or the members scored
-- within a second of the schedule time; a candidate counts only if its decoded "jid" matches).
--
-- KEYS[1]  the lock, sidekiq:unique:<queue>:<class>:<sha256 hex>
-- KEYS[2]  the queues SET
-- KEYS[3]  the queue list, or the schedule ZSET when ARGV[5] is a score
-- ARGV[1]  the owner's jid
-- ARGV[2]  the lock's lifetime, whole seconds
-- ARGV[3]  the job JSON
-- ARGV[4]  the queue name
-- ARGV[5]  '' to enqueue now, or the epoch seconds to schedule at
-- ARGV[6]  '1' when the jid is in doubt, '' otherwise
-- ARGV[7]  how many of the newest items (or of the members near the score) to look at
-- Returns {1} when pushed, {2} when the job was already there (nothing pushed), {0, owner,
-- seconds left} for a duplicate (nothing written).
local function holds(key, jid, score, window)
  local items
  if score == '' then
    items = redis.call('LRANGE', key, 0, window - 1)
  else
    local at = tonumber(score)
    items = redis.call('ZRANGEBYSCORE', key, string.format('%.17g', at - 1),
      string.format('%.17g', at + 1), 'LIMIT', 0, window)
  end
  for _, item in ipairs(items) do
    if string.find(item, jid, 1, true) then
      local ok, job = pcall(cjson.decode, item)
      if ok and type(job) == 'table' and job.jid == jid then
        return true
      end
    end
  end
  return false
end

local window = tonumber(ARGV[7])
local doubt = ARGV[6] == '1'
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  local owner = redis.call('GET', KEYS[1])
  if owner ~= ARGV[1] then
    if doubt and holds(KEYS[3], ARGV[1], ARGV[5], window) then
      return {2}
    end
    return {0, owner, redis.call('TTL', KEYS[1])}
  end
  if redis.call('TTL', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('EXPIRE', KEYS[1], ARGV[2])
  end
  if holds(KEYS[3], ARGV[1], ARGV[5], window) then
    return {2}
  end
elseif doubt and holds(KEYS[3], ARGV[1], ARGV[5], window) then
  -- The lock had expired since the lost write; taken again, it guards the copy that is there.
  return {2}
end
if ARGV[5] == '' then
  redis.call('SADD', KEYS[2], ARGV[4])
  redis.call('LPUSH', KEYS[3], ARGV[3])
else
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[3])
end
return {1}
