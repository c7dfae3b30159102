-- Move due jobs from a sorted set (schedule or retry) to their queue lists, atomically.
--
-- The caller reads due members with ZRANGE ... BYSCORE, rewrites each job in Python (setting
-- enqueued_at without touching any other key) and passes the results here. A member moves only
-- if it is still in the set when this call runs, so any number of pollers, Ruby's included
-- (they pop with ZREM, and a script runs alone), promote each job exactly once.
--
-- Redis keeps a script's earlier writes when a later command fails, so the push comes first,
-- under pcall, and the member leaves the set only once its push succeeded: a queue key that
-- refuses it (a key of another type, out of memory, a read-only replica) leaves the member where
-- it is, and the other members still move. The queues SET is only the Web UI's index of queue
-- names: a refused SADD does not hold a job back (sidekiq.rb's pipelined push does not either),
-- it is reported.
--
-- KEYS[1]       the sorted set
-- KEYS[2]       the queues SET
-- KEYS[3..n]    the queue list of each job, in ARGV order
-- ARGV          triples: member, queue name, job JSON to push
-- Returns {moved, position, error, position, error, ...}: how many jobs moved, then one pair for
-- each member left in the set because its queue refused the push (its position among the
-- triples, from 1, and the error), and at most one pair (0, error) if the queues SET refused.
local moved = 0
local result = {0}
local queues_error = nil
for i = 1, #ARGV, 3 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    local position = (i + 2) / 3
    local queue = KEYS[2 + position]
    local pushed = redis.pcall('LPUSH', queue, ARGV[i + 2])
    if type(pushed) == 'table' and pushed.err then
      result[#result + 1] = position
      result[#result + 1] = queue .. ': ' .. pushed.err
    else
      redis.call('ZREM', KEYS[1], ARGV[i])
      moved = moved + 1
      local added = redis.pcall('SADD', KEYS[2], ARGV[i + 1])
      if type(added) == 'table' and added.err and not queues_error then
        queues_error = KEYS[2] .. ': ' .. added.err
      end
    end
  end
end
result[1] = moved
if queues_error then
  result[#result + 1] = 0
  result[#result + 1] = queues_error
end
return result
