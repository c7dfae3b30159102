-- Give the in-flight jobs of dead workers back to their queues.
--
-- A worker holds a lease key that it refreshes while it lives; when the lease has expired
-- (kill -9, OOM, a lost host), its in-flight lists are moved back, each job to the head of
-- its queue, oldest first in line, byte for byte as it was fetched. Live workers are never
-- touched, however long their jobs run: there is no visibility timeout.
--
-- The list, lease and queue keys are read from the registry, so this script touches keys
-- it was not given: fine on one Redis or Sentinel, not on Redis Cluster (Sidekiq does not
-- support Cluster either).
--
-- KEYS[1]  the in-flight registry HASH (in-flight list -> lease key "\n" queue key)
-- Returns the number of jobs put back.
local entries = redis.call('HGETALL', KEYS[1])
local moved = 0
for i = 1, #entries, 2 do
  local inflight, value = entries[i], entries[i + 1]
  local sep = string.find(value, '\n', 1, true)
  local lease, queue = string.sub(value, 1, sep - 1), string.sub(value, sep + 1)
  if redis.call('EXISTS', lease) == 0 then
    while true do
      -- LPOP takes the newest; each RPUSH lands behind the previous one at the head end,
      -- so the oldest ends nearest the head and is taken first again.
      local item = redis.call('LPOP', inflight)
      if not item then break end
      redis.call('RPUSH', queue, item)
      moved = moved + 1
    end
    redis.call('HDEL', KEYS[1], inflight)
  end
end
return moved
