-- Give the in-flight jobs of dead workers back to their queues.
--
-- A worker holds a lease key that it renews while it lives; when the lease has expired
-- (kill -9, OOM, a lost host), its in-flight hashes and landing lists go back to the head of
-- their queues, ahead of every job waiting there, byte for byte as they were fetched. Live
-- workers are never touched, however long their jobs run: there is no visibility timeout.
--
-- Among one dead worker's jobs the order is roughly the one they were fetched in, not exactly:
-- fetch.lua gives a new job the field number of a job acknowledged in the same step, so a low
-- number may hold a job fetched after others in higher ones. Jobs only swap places within
-- what that one worker held (about its prefetch window). What its landing list holds
-- (fetched last) still goes behind all of its in-flight hash.
--
-- The lease, queue and landing keys are read from the registry, so this script touches keys
-- it was not given: fine on one Redis or behind Sentinel, not on Redis Cluster (which Sidekiq
-- does not support either).
--
-- KEYS[1]  the in-flight registry HASH (in-flight hash -> "lease\nqueue\nlanding")
-- Returns the number of jobs put back.
local function split(value)
  local parts = {}
  for part in string.gmatch(value, '[^\n]+') do
    parts[#parts + 1] = part
  end
  return parts[1], parts[2], parts[3]
end

-- RPUSH in chunks: Lua's unpack has a stack limit.
local function push_head(queue, items)
  for first = 1, #items, 1000 do
    redis.call('RPUSH', queue, unpack(items, first, math.min(first + 999, #items)))
  end
end

local entries = redis.call('HGETALL', KEYS[1])
local moved = 0
for i = 1, #entries, 2 do
  local inflight = entries[i]
  local lease, queue, landing = split(entries[i + 1])
  if redis.call('EXISTS', lease) == 0 then
    -- Highest field number first: RPUSHed in that order, the lowest ends nearest the head
    -- (the BRPOP end); lower numbers mostly hold older jobs.
    local fields = redis.call('HGETALL', inflight)
    local numbered = {}
    for f = 1, #fields, 2 do
      numbered[#numbered + 1] = { tonumber(fields[f]), fields[f + 1] }
    end
    table.sort(numbered, function(a, b) return a[1] > b[1] end)
    -- A landing list holds what an idle BRPOPLPUSH took and no fetch recorded yet: the
    -- newest of all, newest at its left end, so LRANGE gives them newest first too.
    local items = redis.call('LRANGE', landing, 0, -1)
    for _, pair in ipairs(numbered) do
      items[#items + 1] = pair[2]
    end
    if #items > 0 then
      push_head(queue, items)
      moved = moved + #items
    end
    redis.call('DEL', inflight, landing)
    redis.call('HDEL', KEYS[1], inflight)
  end
end
return moved
