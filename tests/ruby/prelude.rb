# Preloaded (ruby -r) by tests/support/ruby.py for ruby_eval/ruby_push: a Sidekiq *client*
# pointed at the test's Redis. Scripts can use Sidekiq::Client, Sidekiq::Queue, JSON, etc.
require "sidekiq"
require "sidekiq/api"
require "json"
require "base64" # loaded by Sidekiq 6 itself, not by 7
require "zlib"

# Debian's redis-rb 4.8 warns on every Sidekiq 6.4 push ("Redis#sadd will always return an
# Integer..."); the noise would bury real errors in test output.
Redis.silence_deprecations = true if defined?(Redis) && Redis.respond_to?(:silence_deprecations=)

# Sidekiq 7 logs its first connection to stdout, which scripts use for their answers.
Sidekiq.logger.level = Logger::WARN
Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch("REDIS_URL") } }
