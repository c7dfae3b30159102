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
-- Poison jobs, as Sidekiq Pro's super_fetch has them: a job that keeps killing the workers
-- that take it would come back at the head of its queue and kill the next one. Each job put
-- back is counted (by the SHA1 of its bytes, which recovery never changes) in a hash that
-- expires a day after the last recovery; one recovered more than `max` times goes to the
-- dead set instead, untouched, and is returned so the caller can log it and add the reason.
--
-- A registry entry this script cannot use (keys of another type, a value that is not
-- "lease\nqueue\nlanding") is skipped and reported: the other workers' jobs are still put
-- back, and the entry is retried on the next run.
--
-- The lease, queue and landing keys are read from the registry, so this script touches keys
-- it was not given: fine on one Redis or behind Sentinel, not on Redis Cluster (which Sidekiq
-- does not support either).
--
-- KEYS[1]  the in-flight registry HASH (in-flight hash -> "lease\nqueue\nlanding")
-- KEYS[2]  the recovery counts HASH (SHA1 of a job -> times recovered)
-- KEYS[3]  the dead set
-- ARGV[1]  the most recoveries a job may have before it is dead (0: no limit, no counting)
-- ARGV[2]  now, float epoch seconds (the dead score)
-- ARGV[3]  oldest dead score kept (now - dead_timeout_in_seconds)
-- ARGV[4]  how many dead jobs to keep at most (dead_max_jobs)
-- ARGV[5]  seconds the recovery counts live after the last recovery
-- Returns {jobs put back, {poison jobs moved to dead ...}, {registry entries skipped ...}}.
local max = tonumber(ARGV[1])

local function split(value)
  local parts = {}
  for part in string.gmatch(value, '[^\n]+') do
    parts[#parts + 1] = part
  end
  return parts[1], parts[2], parts[3]
end

local function usable(key, kind)
  local found = redis.call('TYPE', key)['ok']
  return found == kind or found == 'none'
end

-- RPUSH in chunks: Lua's unpack has a stack limit.
local function push_head(queue, items)
  for first = 1, #items, 1000 do
    redis.call('RPUSH', queue, unpack(items, first, math.min(first + 999, #items)))
  end
end

local entries = redis.call('HGETALL', KEYS[1])
local moved = 0
local poison = {}
local skipped = {}
for i = 1, #entries, 2 do
  local inflight = entries[i]
  local lease, queue, landing = split(entries[i + 1])
  if not (lease and queue and landing) then
    skipped[#skipped + 1] = inflight
  elseif redis.call('EXISTS', lease) == 0 then
    if not (usable(inflight, 'hash') and usable(queue, 'list') and usable(landing, 'list')) then
      skipped[#skipped + 1] = inflight
    else
      -- Highest field number first: RPUSHed in that order, the lowest ends nearest the head
      -- (the BRPOP end); lower numbers mostly hold older jobs.
      local fields = redis.call('HGETALL', inflight)
      local numbered = {}
      for f = 1, #fields, 2 do
        numbered[#numbered + 1] = { tonumber(fields[f]) or 0, fields[f + 1] }
      end
      table.sort(numbered, function(a, b) return a[1] > b[1] end)
      -- A landing list holds what an idle BRPOPLPUSH took and no fetch recorded yet: the
      -- newest of all, newest at its left end, so LRANGE gives them newest first too.
      local items = redis.call('LRANGE', landing, 0, -1)
      for _, pair in ipairs(numbered) do
        items[#items + 1] = pair[2]
      end
      local back = {}
      for _, item in ipairs(items) do
        -- Under pcall: a counts hash or dead set of another type only turns the check off.
        local times = 0
        if max > 0 then
          times = redis.pcall('HINCRBY', KEYS[2], redis.sha1hex(item), 1)
        end
        local killed = type(times) == 'number' and times > max and max > 0
          and type(redis.pcall('ZADD', KEYS[3], ARGV[2], item)) == 'number'
        if killed then
          poison[#poison + 1] = item
        else
          back[#back + 1] = item
        end
      end
      if #back > 0 then
        push_head(queue, back)
        moved = moved + #back
      end
      redis.call('DEL', inflight, landing)
      redis.call('HDEL', KEYS[1], inflight)
    end
  end
end
if max > 0 and #entries > 0 then
  redis.pcall('EXPIRE', KEYS[2], ARGV[5])
end
if #poison > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[3])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[4]))
end
return { moved, poison, skipped }
