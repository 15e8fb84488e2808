-- Drift: the outcome of comparing the last observation of an object's cloud resource with what
-- Qleet made it (objects::drift::Drift as JSON; null before the first observation).
alter table objects add column drift jsonb;
-- When someone asked for an observation (`refresh`): the object shows PROVISIONING until it is
-- evaluated, so whoever waits for READY waits for the answer.
alter table objects add column observe_requested_at timestamptz;
