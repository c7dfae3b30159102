# The pick-up bench's sidekiq.rb worker (bench/pickup.py):
#   sidekiq -r bench/ruby/pickup.rb -q critical -q default -q low
# BenchPickup appends "<pushed> <now>" to $BENCH_MARK_DIR/pickups when it starts: when the
# producer pushed the job (its argument) and when this process started it.
require "sidekiq"

Redis.silence_deprecations = true if defined?(Redis) && Redis.respond_to?(:silence_deprecations=)

Sidekiq.configure_server { |config| config.redis = { url: ENV.fetch("REDIS_URL") } }

class BenchPickup
  include Sidekiq::Worker

  def perform(pushed)
    now = Time.now.to_f
    path = File.join(ENV.fetch("BENCH_MARK_DIR"), "pickups")
    File.open(path, "a") { |f| f.write("#{pushed} #{now}\n") }
  end
end
