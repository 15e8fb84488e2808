-- The audit trail: who changed what, when, with the spec diff. Append-only: triggers refuse
-- every UPDATE, DELETE and TRUNCATE, and under the management plane the schema, the table and
-- the triggers are handed to the management role after this migration has run (see the
-- management plane's `fleet::lifecycle::protect_audit_trail`), so the tenant's own database role
-- can only read and append: it can neither change, delete nor drop an entry, nor disable the
-- triggers. Made only where it is missing, because that hand-over makes the schema one the
-- tenant role cannot create in.
create schema if not exists qleet_audit;

do $$
begin
  if to_regclass('qleet_audit.entries') is null then
    create table qleet_audit.entries (
      id bigint generated always as identity primary key,
      at timestamptz not null default clock_timestamp(),
      -- "user:<id>", "token:<id>", "admin", "agent:<id>" or "control-plane".
      actor text not null,
      -- e.g. "object.create", "object.update", "object.replace", "object.delete",
      -- "object.retry", "object.refresh", "apply", "agent.register", "agent.report".
      action text not null,
      object_id uuid,
      object_kind text,
      object_name text,
      -- One line a person reads.
      detail text not null default '',
      -- Field diffs: [{ "path": "spec.region", "before": ..., "after": ... }].
      diff jsonb not null default '[]'
    );
    create index entries_object on qleet_audit.entries (object_kind, object_name, id);

    create function qleet_audit.refuse_change() returns trigger
    language plpgsql as $f$
    begin
      raise exception 'the audit trail is append-only: % is refused', tg_op
        using errcode = 'insufficient_privilege';
    end
    $f$;
    create trigger entries_append_only before update or delete on qleet_audit.entries
      for each row execute function qleet_audit.refuse_change();
    create trigger entries_no_truncate before truncate on qleet_audit.entries
      for each statement execute function qleet_audit.refuse_change();
  end if;
end
$$;
