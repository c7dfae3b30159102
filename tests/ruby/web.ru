# rackup config: the real Sidekiq Web UI (6.4.1, or 7.x on RUBYLIB) on the test's Redis.
#
#   REDIS_URL=redis://127.0.0.1:6379/0 rackup -s webrick -o 127.0.0.1 -p 9292 tests/ruby/web.ru
#
# Used by tests/support/web_ui.py; the tests load its pages in headless Chromium.
require "securerandom"
require "rack/session/cookie"
require "sidekiq"
require "sidekiq/web"

# Debian's redis-rb 4.8 warns on every Sidekiq 6.4 call ("Redis#sadd will always return an
# Integer..."); the noise would bury real errors in the server log.
Redis.silence_deprecations = true if defined?(Redis) && Redis.respond_to?(:silence_deprecations=)

Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch("REDIS_URL") } }

# 6.4.1's CsrfProtection keeps its token in the Rack session and raises without one
# (`Sidekiq::Web.set :sessions` is a no-op since 6.0). A fresh secret per server: the only
# sessions it ever sees are the test's own.
use Rack::Session::Cookie, secret: SecureRandom.hex(64), same_site: true, max_age: 86_400

run Sidekiq::Web
