# Enqueue from Ruby, as the Rails app does: now and in two seconds.
require_relative "payments"

puts PaymentReportWorker.perform_async(42, "2026-11")
puts PaymentReportWorker.perform_in(2, 43, "2026-11")
