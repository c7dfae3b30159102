# ActiveJob classes for the interop tests: Debian's ruby-activejob (Rails 6.1) through its
# Sidekiq adapter, as a Rails app would have them.
#   sidekiq -r /abs/path/tests/ruby/activejob_jobs.rb   (runs jobs Python enqueued)
#   ruby -r prelude.rb -e 'require "/abs/path/tests/ruby/activejob_jobs.rb"; ...'  (enqueues)
# AjRecorder appends one JSON document per run to the Redis list "results:AjRecorder", with
# every argument described by Describe (class and value), so Python compares value by value.
require_relative "jobs" # Sidekiq's Redis (REDIS_URL) and poll interval
require "active_support/all" # a Rails app loads all core extensions (1.month, Time.zone...)
require "active_job"
require "global_id"
require "bigdecimal"

ActiveJob::Base.queue_adapter = :sidekiq
# Rails 6.1 passes a BigDecimal argument through raw (7.0 serializes it), which Sidekiq 7's
# strict argument check refuses: a Rails 6.1 app on Sidekiq 7 turns the check off.
Sidekiq.strict_args!(false) if Sidekiq.respond_to?(:strict_args!)
ActiveJob::Base.logger = Logger.new(nil)
# What a Rails app sets with config.time_zone: TimeWithZone arguments deserialize into it.
Time.zone_default = Time.find_zone!("UTC")
GlobalID.app = "celery-sidekiq-test"

# A model GlobalID can locate without a database: User.find(id) is the user with that id.
class User
  include GlobalID::Identification
  attr_reader :id

  def initialize(id)
    @id = id
  end

  def self.find(id)
    new(Integer(id))
  end
end

# A value as [class name, plain value], recursively, so Python sees exactly what Ruby got.
module Describe
  def self.call(value)
    case value
    when Hash then [value.class.name, value.map { |k, v| [call(k), call(v)] }]
    when Array then ["Array", value.map { |v| call(v) }]
    # (a TimeWithZone says its class is Time)
    when ActiveSupport::TimeWithZone then ["ActiveSupport::TimeWithZone", value.iso8601(6), value.time_zone.tzinfo.name]
    when Time, DateTime then [value.class.name, value.iso8601(6)]
    when Date then ["Date", value.iso8601]
    when ActiveSupport::Duration then ["Duration", value.value, value.parts.to_a.map { |k, v| [k.to_s, v] }]
    when BigDecimal then ["BigDecimal", value.to_s("F")]
    when Symbol, Module then [value.class.name, value.to_s]
    when User then ["User", value.id]
    else [value.class.name, value]
    end
  end
end

# Records what it ran with: the target for jobs Python enqueues with activejob.perform_later.
class AjRecorder < ActiveJob::Base
  queue_as :default

  def perform(*args, **kwargs)
    doc = JSON.generate(
      "job_id" => job_id, "provider_job_id" => provider_job_id, "queue_name" => queue_name,
      "priority" => priority, "executions" => executions, "locale" => locale,
      "timezone" => timezone, "enqueued_at" => enqueued_at,
      "args" => Describe.(args), "kwargs" => Describe.(kwargs)
    )
    Sidekiq.redis { |r| r.rpush("results:#{self.class.name}", doc) }
  end
end

# An app's own serializer, which the Python side does not know: its jobs must fail there.
Money = Struct.new(:cents, :currency)
class MoneySerializer < ActiveJob::Serializers::ObjectSerializer
  def serialize?(argument) = argument.is_a?(Money)
  def serialize(money) = super("cents" => money.cents, "currency" => money.currency)
  def deserialize(hash) = Money.new(hash["cents"], hash["currency"])
end
ActiveJob::Serializers.add_serializers(MoneySerializer)

# Classes that only exist so Ruby can enqueue them; the Celery worker runs them.
class PyAjJob < ActiveJob::Base; end
class PyMappedJob < ActiveJob::Base; end
