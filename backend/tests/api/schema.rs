//! The committed SDL matches the schema the code builds.

#[test]
fn committed_schema_is_up_to_date() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.graphql");
    let current = qleet::graphql::sdl();
    if std::env::var_os("QLEET_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &current).expect("write schema.graphql");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == current,
        "backend/schema.graphql is stale; regenerate it with `QLEET_UPDATE_SCHEMA=1 cargo test -p qleet --test api schema`"
    );
}
