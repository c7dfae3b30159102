# The PaymentReportWorker story, Ruby side (sidekiq.rb 6.4+).
#
# The Rails app keeps enqueuing PaymentReportWorker as it always did; the class body is gone
# because Python runs it now. ReportReadyNotifier still runs in Ruby: Python enqueues it.
#
#   sidekiq -r ./examples/ruby/payments.rb -q mailers        # REDIS_URL=redis://localhost:6379/0
require "sidekiq"
require "json"
require "socket"

Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)
Sidekiq.configure_server { |c| c.redis = { url: ENV.fetch("REDIS_URL", "redis://localhost:6379/0") } }
Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch("REDIS_URL", "redis://localhost:6379/0") } }

# Runs in Python (celery_sidekiq); Ruby only enqueues it.
class PaymentReportWorker
  include Sidekiq::Worker
  sidekiq_options queue: "reports"
end

# Runs in Ruby; Python enqueues it with app.send_task("ReportReadyNotifier", ...).
class ReportReadyNotifier
  include Sidekiq::Worker
  sidekiq_options queue: "mailers"

  def perform(account_id, month, total)
    Sidekiq.redis do |r|
      r.rpush("demo:log", JSON.generate("ran_in" => "Ruby (#{Socket.gethostname})", "class" => self.class.name,
                                        "args" => [account_id, month, total], "jid" => jid))
    end
  end
end
