-- Reliable fetch: take up to `count` jobs from a worker's queues and record them in flight for
-- this worker in the same atomic step, acknowledging the jobs it finished since the last call
-- on the way.
--
-- There is no moment when a job exists nowhere: it is in its queue, or in exactly one worker's
-- in-flight hash until that worker settles it (settle.lua), gives it back (giveback.lua) or
-- dies and recover.lua puts it back. Each in-flight job is a field numbered by the worker (its
-- delivery tag), so byte-identical duplicates never collide. An acknowledged field of a queue
-- this call takes from is reused for a new job of that queue (HSET overwrites the finished
-- job, in this same step that would have deleted it); only the acknowledged fields left over
-- are one HDEL per hash. At steady state a batch is one RPOP and one HSET, and no HDEL.
--
-- The numbers are safe because the worker never sends a fetch twice and, when a reply is lost,
-- neither reuses the fields acknowledged in that call nor hands out the new numbers it may
-- have taken (fetch.py: ReliableFetch.lost); what that call took is given back by giveback.lua.
--
-- A key this call cannot use (a stray `SET queue:x ...`) never stops it: every read and write
-- that could meet one runs under pcall, what was taken from a key is put back there if its
-- in-flight hash refuses it, and the key is reported instead of a job.
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
-- one; 0 for a kombu message; -1 for a key that could not be used, whose error is the item),
-- the item, 1 for a job or 0 for a kombu message.
local n = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local seq = tonumber(ARGV[3])
local flags = ARGV[4]
local out = {}

local function unusable(i, key, reply)
  out[#out + 1] = i
  out[#out + 1] = -1
  out[#out + 1] = key .. ': ' .. tostring(reply.err)
  out[#out + 1] = 0
end

-- RPOP up to `count` items, or nothing from a key of another type.
local function take(i, key, count)
  local items = redis.pcall('RPOP', key, count)
  if type(items) == 'table' and items.err then
    unusable(i, key, items)
    return nil
  end
  return items or nil
end

if string.find(flags, 'r', 1, true) then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[5])
  for i = 1, n do
    redis.pcall('HSET', KEYS[1], KEYS[4 * i], ARGV[5 + i])
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

-- Record `items`, just taken from `source`, in flight; if the hash refuses them, they go back
-- to the end of `source` they came from, in their order, and no field is used up.
local function record(i, inflight, source, items)
  local free = freed[inflight]
  local first_free = free and free.next
  local first_seq = seq
  local fields = {}
  local taken = {}
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
    taken[#taken + 1] = { i, field, item, 1 }
  end
  local reply = redis.pcall('HSET', inflight, unpack(fields))
  if type(reply) == 'table' and reply.err then
    for k = #items, 1, -1 do
      redis.call('RPUSH', source, items[k])
    end
    if free then free.next = first_free end
    seq = first_seq
    unusable(i, inflight, reply)
    return false
  end
  for _, quad in ipairs(taken) do
    for _, value in ipairs(quad) do out[#out + 1] = value end
  end
  want = want - #items
  return true
end

for i = 1, n do
  if want <= 0 then break end
  local base = 4 * i - 1
  local queue, inflight, landing = KEYS[base], KEYS[base + 1], KEYS[base + 2]
  local usable = true
  if string.find(flags, 'l', 1, true) then
    local landed = take(i, landing, want)
    if landed then usable = record(i, inflight, landing, landed) end
  end
  if usable and want > 0 then
    local items = take(i, queue, want)
    if items then record(i, inflight, queue, items) end
  end
end

-- What no new job took is deleted, as an ack always was.
for j = first_ack, #KEYS do
  local free = freed[KEYS[j]]
  if free.next <= #free.fields then
    redis.pcall('HDEL', KEYS[j], unpack(free.fields, free.next))
    free.next = #free.fields + 1
  end
end

local jobs = 0
for k = 2, #out, 4 do
  if out[k] > 0 then jobs = jobs + 1 end
end
if jobs == 0 and string.find(flags, 'k', 1, true) then
  for i = 1, n do
    if want <= 0 then break end
    local items = take(i, KEYS[4 * i + 2], want)
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
