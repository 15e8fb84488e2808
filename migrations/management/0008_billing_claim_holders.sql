-- Billing claims (stored Stripe events, subscription cancellations) are held by a named
-- management-plane instance, like the lifecycle's: only the holder renews its claim, so an
-- instance that was paused past its lease cannot extend the claim another instance took over.
alter table stripe_events add column claimed_by uuid;
alter table billing_cancellations add column claimed_by uuid;
