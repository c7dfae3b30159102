-- Reliable fetch: take up to `count` jobs from a worker's queues and record them in flight for
-- this worker in the same atomic step, acknowledging the jobs it finished since the last call
-- on the way.
--
-- There is no moment when a job exists nowhere: it is in its queue, or in exactly one worker's
-- in-flight hash until that worker settles it (settle.lua) or dies and recover.lua puts it
-- back. Each in-flight job is a field numbered by the worker (its delivery tag), so
-- byte-identical duplicates never collide. An acknowledged field of a queue this call takes
-- from is reused for a new job of that queue (HSET overwrites the finished job, in this same
-- step that would have deleted it); only the acknowledged fields left over are one HDEL per
-- hash. At steady state a batch is one RPOP and one HSET, and no HDEL.
--
-- KEYS[1]            the in-flight registry HASH (in-flight hash -> lease key, queue key, landing key)
-- KEYS[2]            this worker's lease key
-- then per queue:    the queue list, this worker's in-flight HASH for it, its landing LIST
--                    (where an idle BRPOPLPUSH put a job), kombu's key for the queue
-- then per ack:      an in-flight HASH with acknowledged jobs (of any queue, taken from here or not)
-- ARGV[1]            number of queues, n
-- ARGV[2]            how many jobs to take at most
-- ARGV[3]            the first field number never handed out (new numbers count up from there
--                    once the acknowledged fields of the hash are used up)
-- ARGV[4]            flags: "r" re-register and renew the lease, "l" drain landing lists,
--                    "k" also read kombu's keys (only when idle: no job came)
-- ARGV[5]            lease seconds
-- ARGV[6 .. 5+n]     each in-flight hash's registry value
-- ARGV[6+n ..]       per ack key: the acknowledged field numbers, space separated
-- Returns a flat array of quadruples: queue index (1-based), field number (a reused or a new
-- one; 0 for a kombu message), the item, 1 for a job or 0 for a kombu message.
local n = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local seq = tonumber(ARGV[3])
local flags = ARGV[4]

if string.find(flags, 'r', 1, true) then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[5])
  for i = 1, n do
    redis.call('HSET', KEYS[1], KEYS[4 * i], ARGV[5 + i])
  end
end

-- Acknowledged fields, per in-flight hash, lowest first: free for this call's new jobs of
-- that hash. A number listed twice is freed once (two jobs must never share a field).
local first_ack = 3 + 4 * n
local freed = {}
for j = first_ack, #KEYS do
  local free = freed[KEYS[j]] or { fields = {}, seen = {}, next = 1 }
  freed[KEYS[j]] = free
  for field in string.gmatch(ARGV[6 + n + j - first_ack], '%S+') do
    local number = tonumber(field)
    if number and not free.seen[number] then
      free.seen[number] = true
      free.fields[#free.fields + 1] = number
    end
  end
  table.sort(free.fields)
end

local out = {}
local function record(i, inflight, items)
  local free = freed[inflight]
  local fields = {}
  for _, item in ipairs(items) do
    local field
    if free and free.next <= #free.fields then
      field = free.fields[free.next]
      free.next = free.next + 1
    else
      field = seq
      seq = seq + 1
    end
    fields[#fields + 1] = field
    fields[#fields + 1] = item
    out[#out + 1] = i
    out[#out + 1] = field
    out[#out + 1] = item
    out[#out + 1] = 1
    want = want - 1
  end
  redis.call('HSET', inflight, unpack(fields))
end

for i = 1, n do
  if want <= 0 then break end
  local base = 4 * i - 1
  local queue, inflight, landing = KEYS[base], KEYS[base + 1], KEYS[base + 2]
  if string.find(flags, 'l', 1, true) then
    local landed = redis.call('RPOP', landing, want)
    if landed then record(i, inflight, landed) end
  end
  if want > 0 then
    local items = redis.call('RPOP', queue, want)
    if items then record(i, inflight, items) end
  end
end

-- What no new job took is deleted, as an ack always was.
for j = first_ack, #KEYS do
  local free = freed[KEYS[j]]
  if free.next <= #free.fields then
    redis.call('HDEL', KEYS[j], unpack(free.fields, free.next))
    free.next = #free.fields + 1
  end
end

if #out == 0 and string.find(flags, 'k', 1, true) then
  for i = 1, n do
    if want <= 0 then break end
    local items = redis.call('RPOP', KEYS[4 * i + 2], want)
    if items then
      for _, item in ipairs(items) do
        out[#out + 1] = i
        out[#out + 1] = 0
        out[#out + 1] = item
        out[#out + 1] = 0
        want = want - 1
      end
    end
  end
end
return out
