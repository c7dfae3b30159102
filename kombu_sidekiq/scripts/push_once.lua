-- Push (or schedule) a job unless the same jid is already there: the checked path of a write
-- whose earlier attempt lost its reply, so that sending it twice leaves one copy.
--
-- A lost reply says nothing about the write: it may have landed. The retry carries a rebuilt
-- job (kombu's publish retry builds it again: same jid, other created_at/enqueued_at), so the
-- bytes cannot be compared; the jid can. Only the newest items are looked at, where an LPUSH
-- a moment ago is (index 0 up), or the members scored within a second of the schedule time:
-- bounded, so a long queue never blocks Redis. A plain find of the jid picks candidates
-- cheaply; each is decoded to compare its own "jid", so a job that merely mentions the jid in
-- its args is not taken for it. An item that does not decode is not this job.
--
-- KEYS[1]  the queues SET (untouched when scheduling)
-- KEYS[2]  the queue list, or the schedule ZSET when ARGV[4] is a score
-- ARGV[1]  the queue name
-- ARGV[2]  the job JSON
-- ARGV[3]  the job's jid
-- ARGV[4]  '' to enqueue now, or the epoch seconds to schedule at
-- ARGV[5]  how many of the newest items (or of the members near the score) to look at
-- Returns 1 when it wrote the job, 0 when the jid was already there (nothing written).
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

if holds(KEYS[2], ARGV[3], ARGV[4], tonumber(ARGV[5])) then
  return 0
end
if ARGV[4] == '' then
  redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('LPUSH', KEYS[2], ARGV[2])
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
end
return 1
