# Sidekiq job classes for interop tests, loaded by the real sidekiq.rb server:
#   sidekiq -r /abs/path/tests/ruby/jobs.rb -q default   (Sidekiq 6.4.1 needs a file path)
# Each recorder job appends one JSON document per run to the Redis list
# "results:<class name>", so Python tests can wait for and inspect what Ruby received.
require "sidekiq"
require "json"

# Debian's redis-rb 4.8 warns on every Sidekiq 6.4 push ("Redis#sadd will always return an
# Integer..."); the noise would bury real errors in test output.
Redis.silence_deprecations = true if defined?(Redis) && Redis.respond_to?(:silence_deprecations=)

Sidekiq.configure_server do |config|
  config.redis = { url: ENV.fetch("REDIS_URL") }
  # Scheduled/retry poller: Sidekiq 6.4.1 defaults to a 10-15 s initial wait and then
  # ~5 s * process count between polls; an explicit interval skips the 10 s and keeps
  # tests of "at"/retry jobs fast. SIDEKIQ_POLL_INTERVAL overrides (seconds, float).
  # (6.x keeps its options in a Hash, `options`; 7.x's Config is indexed itself.)
  options = config.respond_to?(:options) ? config.options : config
  options[:poll_interval_average] = Float(ENV.fetch("SIDEKIQ_POLL_INTERVAL", "1"))
end
Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch("REDIS_URL") } }

module RecordsResults
  def record(args)
    doc = JSON.generate("jid" => jid, "args" => args, "class" => self.class.name)
    Sidekiq.redis { |r| r.rpush("results:#{self.class.name}", doc) }
  end
end

# Records its arguments: the target for jobs enqueued by Celery/Python.
class RubyRecorder
  include Sidekiq::Worker
  include RecordsResults

  def perform(*args)
    record(args)
  end
end

# Same as RubyRecorder, but namespaced: checks "Workers::RubyNested" class names round-trip.
module Workers
  class RubyNested
    include Sidekiq::Worker
    include RecordsResults

    def perform(*args)
      record(args)
    end
  end
end

# Always fails; with Sidekiq's default retry policy the job lands in the "retry" zset
# with error_class "RuntimeError" and error_message "boom from ruby".
class RubyFailer
  include Sidekiq::Worker

  def perform(*_args)
    raise "boom from ruby"
  end
end
