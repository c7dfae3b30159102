-- Reliable fetch: take up to `count` items from a worker's queues and, for Sidekiq jobs,
-- record them in flight for this worker in the same atomic step (RPOPLPUSH into its private
-- in-flight list), acknowledging the jobs it finished since the last call on the way.
--
-- There is no moment when a job exists nowhere: it is in its queue or in exactly one worker's
-- in-flight list until that worker acknowledges it. A worker whose lease expires (it died)
-- has its in-flight jobs put back by recover.lua.
--
-- KEYS[1]            the in-flight registry HASH (in-flight list -> lease key "\n" queue key)
-- KEYS[2]            this worker's lease key
-- then per queue:    the queue list, its in-flight list for this worker, kombu's key for it
-- then per ack:      the in-flight list holding the acknowledged job
-- ARGV[1]            number of queues, n
-- ARGV[2]            how many items to take at most
-- ARGV[3]            lease seconds
-- ARGV[4 .. 3+n]     each in-flight list's registry value
-- ARGV[4+n ..]       each acknowledged job, in the order of its KEYS entry
-- Returns a flat array: queue index (1-based), 1 for a job or 0 for a kombu message, the item.
local n = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
redis.call('SET', KEYS[2], '1', 'EX', ARGV[3])

local first_ack = 3 + 3 * n
for j = first_ack, #KEYS do
  -- count -1: the oldest copy, should the same payload be in flight twice
  redis.call('LREM', KEYS[j], -1, ARGV[4 + n + j - first_ack])
end

local out = {}
for i = 1, n do
  if want <= 0 then break end
  local base = 3 * (i - 1) + 3
  local queue, inflight, kombu = KEYS[base], KEYS[base + 1], KEYS[base + 2]
  local moved = 0
  while want > 0 do
    local item = redis.call('RPOPLPUSH', queue, inflight)
    if not item then break end
    out[#out + 1] = i
    out[#out + 1] = 1
    out[#out + 1] = item
    moved = moved + 1
    want = want - 1
  end
  if moved > 0 then
    redis.call('HSET', KEYS[1], inflight, ARGV[3 + i])
  end
  while want > 0 do
    local item = redis.call('RPOP', kombu)
    if not item then break end
    out[#out + 1] = i
    out[#out + 1] = 0
    out[#out + 1] = item
    want = want - 1
  end
end
return out
