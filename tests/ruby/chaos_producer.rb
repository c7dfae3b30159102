# The Ruby producer of the chaos soak (tests/chaos.py): Sidekiq::Client.push of Chaos::Work
# jobs, through the fault proxy, at CHAOS_RATE jobs per second until SIGTERM.
#
# Each job's jid is chosen here, before the push, so a push that raised is still known:
# stdout gets one line per push, "ok <jid>" (Sidekiq::Client.push returned) or
# "err <jid> <error>" (it raised: the job may or may not have been written).
#
# Environment: REDIS_URL (the proxy), CHAOS_RATE (jobs/s, default 20), CHAOS_SEED.
require "sidekiq"
require "securerandom"

Redis.silence_deprecations = true if defined?(Redis) && Redis.respond_to?(:silence_deprecations=)
Sidekiq.logger.level = Logger::WARN
Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch("REDIS_URL"), network_timeout: 5 } }

$stdout.sync = true
stopping = false
Signal.trap("TERM") { stopping = true }
Signal.trap("INT") { stopping = true }

rate = Float(ENV.fetch("CHAOS_RATE", "20"))
rng = Random.new(Integer(ENV.fetch("CHAOS_SEED", "1")))
seq = 0
started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
until stopping
  jid = SecureRandom.hex(12)
  seq += 1
  begin
    Sidekiq::Client.push(
      "class" => "Chaos::Work", "queue" => "default", "jid" => jid,
      "args" => ["rb", seq, rng.rand < 0.1 ? rng.rand * 0.01 : 0.0]
    )
    puts "ok #{jid}"
  rescue StandardError => e
    puts "err #{jid} #{e.class}: #{e.message.gsub(/\s+/, ' ')[0, 200]}"
    sleep 0.2
  end
  # Paced against the start, so a slow push is caught up on (bounded by the rate).
  ahead = started + seq / rate - Process.clock_gettime(Process::CLOCK_MONOTONIC)
  sleep ahead if ahead > 0
end
