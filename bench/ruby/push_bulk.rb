# sidekiq.rb's own bulk enqueue, timed inside Ruby so that starting Ruby is not counted:
#   REDIS_URL=redis://... BENCH_JOBS=100000 ruby bench/ruby/push_bulk.rb
# Prints {"jobs": N, "seconds": S}. Jobs go to queue:default, 1,000 per push_bulk call.
require "sidekiq"
require "json"

# Debian's redis-rb 4.8 warns on every Sidekiq 6.4 push; the noise is not the point here.
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch("REDIS_URL") } }

count = Integer(ENV.fetch("BENCH_JOBS"))
batch = Integer(ENV.fetch("BENCH_BATCH", "1000"))
args = (1..count).map { |n| [n] }

# Connect and load everything once, outside the timer, as a long-running producer would have.
Sidekiq::Client.push_bulk("class" => "BenchJob", "args" => [[0]])
Sidekiq.redis { |r| r.del("queue:default") }

started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
args.each_slice(batch) { |slice| Sidekiq::Client.push_bulk("class" => "BenchJob", "args" => slice) }
seconds = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started

queued = Sidekiq.redis { |r| r.llen("queue:default") }
abort("push_bulk queued #{queued} jobs, not #{count}") unless queued == count
puts JSON.generate("jobs" => count, "seconds" => seconds)
