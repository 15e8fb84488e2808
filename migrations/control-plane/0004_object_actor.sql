-- Who last changed an object's spec ("user:<id>", "token:<id>" or "admin"): the agent passes it
-- to AWS as the session's SourceIdentity, so the customer's CloudTrail shows who.
alter table objects add column changed_by text;
