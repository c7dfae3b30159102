-- Release a unique lock only if the given job still owns it (compare-and-delete).
--
-- A plain DEL could drop a lock that expired and was since taken by another job with the same
-- args; comparing the owner's jid first, in one script, makes that impossible.
--
-- KEYS[1]  the lock, sidekiq:unique:<queue>:<class>:<sha256 hex>
-- ARGV[1]  the jid of the job releasing it
-- Returns 1 if this call deleted the lock, 0 otherwise.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
