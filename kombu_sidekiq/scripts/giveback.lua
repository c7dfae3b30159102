-- Give back, to the head of their queues, the jobs a live worker holds that no task of its own
-- is running: what a fetch took whose reply was lost, what an idle BRPOPLPUSH landed after its
-- queue was cancelled, and, at a warm stop, everything it still holds but the jobs still
-- running. One step per call: a job is in flight or back in its queue, never both, never
-- neither.
--
-- The worker says which fields it keeps (jobs delivered to its tasks and not yet acknowledged)
-- and which acknowledged fields to delete: those only if they still hold the job acknowledged,
-- because a fetch whose reply was lost may have given the field to a new job, which goes back.
-- Everything else in the in-flight hash and the whole landing list go back, landing list first
-- (the newest), then by field number, highest first, so the lowest ends nearest the head.
--
-- A queue whose keys have another type (a stray `SET queue:x ...`) is left as it is and
-- reported; the other queues are still given back.
--
-- KEYS               per queue: the queue list, the worker's in-flight HASH, its landing LIST
-- ARGV[1]            number of queues, n
-- ARGV[2 .. 1+n]     per queue: the field numbers kept, space separated
-- ARGV[2+n ..]       triples: queue index (1-based), an acknowledged field number, the job
--                    acknowledged in it ('' when not known: the field then goes back)
-- Returns {jobs given back, index of each queue skipped ...}.
local n = tonumber(ARGV[1])

local function usable(key, kind)
  local found = redis.call('TYPE', key)['ok']
  return found == kind or found == 'none'
end

local acked = {}
for j = 2 + n, #ARGV, 3 do
  local i = tonumber(ARGV[j])
  acked[i] = acked[i] or {}
  acked[i][#acked[i] + 1] = { ARGV[j + 1], ARGV[j + 2] }
end

local moved = 0
local skipped = {}
for i = 1, n do
  local queue, inflight, landing = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  if not (usable(queue, 'list') and usable(inflight, 'hash') and usable(landing, 'list')) then
    skipped[#skipped + 1] = i
  else
    for _, pair in ipairs(acked[i] or {}) do
      if pair[2] ~= '' and redis.call('HGET', inflight, pair[1]) == pair[2] then
        redis.call('HDEL', inflight, pair[1])
      end
    end
    local keep = {}
    for field in string.gmatch(ARGV[1 + i], '%S+') do
      keep[field] = true
    end
    local fields = redis.call('HGETALL', inflight)
    local numbered = {}
    for f = 1, #fields, 2 do
      if not keep[fields[f]] then
        numbered[#numbered + 1] = { tonumber(fields[f]) or 0, fields[f], fields[f + 1] }
      end
    end
    table.sort(numbered, function(a, b) return a[1] > b[1] end)
    local items = redis.call('LRANGE', landing, 0, -1)
    for _, entry in ipairs(numbered) do
      items[#items + 1] = entry[3]
    end
    -- In chunks: Lua's unpack has a stack limit.
    for first = 1, #items, 1000 do
      redis.call('RPUSH', queue, unpack(items, first, math.min(first + 999, #items)))
    end
    for first = 1, #numbered, 1000 do
      local names = {}
      for k = first, math.min(first + 999, #numbered) do
        names[#names + 1] = numbered[k][2]
      end
      redis.call('HDEL', inflight, unpack(names))
    end
    redis.call('DEL', landing)
    moved = moved + #items
  end
end
local reply = { moved }
for _, i in ipairs(skipped) do reply[#reply + 1] = i end
return reply
