-- Move one unreadable member of the periodic ZSET aside, as it is, atomically.
--
-- The member leaves the periodic ZSET, so no poller reads it and fails on it again, and lands
-- in a HASH beside it, under its exact bytes, with why it was refused: nothing is retried
-- forever and nothing is dropped. A compare-and-set on the score the caller read, as in
-- periodic_claim.lua: a member somebody changed meanwhile is left for the next look.
--
-- Redis does not roll a script back, so the hash's type is checked before anything is
-- written: an error reply after the ZREM would drop the member.
--
-- KEYS[1]  the periodic ZSET
-- KEYS[2]  the HASH of members moved aside (periodic:invalid)
-- ARGV[1]  the member, as read
-- ARGV[2]  the score the caller read
-- ARGV[3]  what to store for it: JSON {"reason", "score", "moved_at"}
-- Returns 1 if this call moved the member, 0 if it is gone or its score changed; an error
-- reply, with nothing written, if KEYS[2] holds another type.
local found = redis.call('TYPE', KEYS[2]).ok
if found ~= 'hash' and found ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' holds a ' .. found ..
    ', not a hash: nothing moved')
end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
