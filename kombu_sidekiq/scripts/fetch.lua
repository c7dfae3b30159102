-- Reliable fetch: take up to `count` jobs from a worker's queues and record them in flight for
-- this worker in the same atomic step, acknowledging the jobs it finished since the last call
-- on the way.
--
-- There is no moment when a job exists nowhere: it is in its queue, or in exactly one worker's
-- in-flight hash until that worker settles it (settle.lua) or dies and recover.lua puts it
-- back. Each in-flight job is a field numbered by the worker (its delivery tag), so acks of a
-- whole batch are one HDEL and byte-identical duplicates never collide.
--
-- KEYS[1]            the in-flight registry HASH (in-flight hash -> lease key, queue key, landing key)
-- KEYS[2]            this worker's lease key
-- then per queue:    the queue list, this worker's in-flight HASH for it, its landing LIST
--                    (where an idle BRPOPLPUSH put a job), kombu's key for the queue
-- then per ack:      an in-flight HASH with acknowledged jobs
-- ARGV[1]            number of queues, n
-- ARGV[2]            how many jobs to take at most
-- ARGV[3]            the first free field number (the worker counts up from there)
-- ARGV[4]            flags: "r" re-register and renew the lease, "l" drain landing lists,
--                    "k" also read kombu's keys (only when idle: no job came)
-- ARGV[5]            lease seconds
-- ARGV[6 .. 5+n]     each in-flight hash's registry value
-- ARGV[6+n ..]       per ack key: the acknowledged field numbers, space separated
-- Returns a flat array of quadruples: queue index (1-based), field number (0 for a kombu
-- message), the item, 1 for a job or 0 for a kombu message.
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

local first_ack = 3 + 4 * n
for j = first_ack, #KEYS do
  local fields = {}
  for field in string.gmatch(ARGV[6 + n + j - first_ack], '%S+') do
    fields[#fields + 1] = field
  end
  if #fields > 0 then
    redis.call('HDEL', KEYS[j], unpack(fields))
  end
end

local out = {}
local function record(i, inflight, items)
  local pairs = {}
  for _, item in ipairs(items) do
    pairs[#pairs + 1] = seq
    pairs[#pairs + 1] = item
    out[#out + 1] = i
    out[#out + 1] = seq
    out[#out + 1] = item
    out[#out + 1] = 1
    seq = seq + 1
    want = want - 1
  end
  redis.call('HSET', inflight, unpack(pairs))
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
