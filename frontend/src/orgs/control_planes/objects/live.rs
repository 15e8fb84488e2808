//! Live object status: in the browser, the object pages follow
//! `GET /orgs/{slug}/control-planes/{id}/objects/events` (Server-Sent Events, one JSON
//! [`ObjectChange`] per change, relayed by the management plane from the control plane's
//! `objectChanges` subscription). On the server, and without JavaScript, nothing here runs.
//!
//! As for control planes (see [`crate::orgs::control_planes::live`]), changes land in a map
//! beside the loaded data and a view shows whichever of the two is newer.

use std::collections::HashMap;

use leptos::prelude::*;

use super::{ObjectChange, ObjectKey};
use crate::orgs::control_planes::live::is_older;

/// The newest change heard from the stream, by object.
pub type ObjectLive = RwSignal<HashMap<ObjectKey, ObjectChange>>;

/// Follows the object stream of control plane `cp` of organisation `slug` while the calling
/// component lives (in the browser only). `on_change` hears every change that changed the
/// map. Each time the stream (re)connects, the current states are fetched and merged too.
pub fn watch_objects(
    slug: Memo<String>,
    cp: Memo<String>,
    on_change: impl Fn(&ObjectChange) + 'static,
) -> ObjectLive {
    let live: ObjectLive = RwSignal::new(HashMap::new());
    #[cfg(feature = "hydrate")]
    {
        use std::rc::Rc;

        use crate::orgs::control_planes::live::stream::Stream;

        let on_change = Rc::new(on_change);
        Effect::new(move |_| {
            let (slug, cp) = (slug.get(), cp.get());
            let on_change = on_change.clone();
            let apply: Rc<dyn Fn(ObjectChange)> = Rc::new(move |change: ObjectChange| {
                let mut changed = false;
                live.maybe_update(|map| {
                    changed = merge(map, &change);
                    changed
                });
                if changed {
                    on_change(&change);
                }
            });
            let on_open = {
                let (apply, cp) = (apply.clone(), cp.clone());
                move || {
                    let (apply, cp) = (apply.clone(), cp.clone());
                    leptos::task::spawn_local(async move {
                        if let Ok(states) = super::object_states(cp).await {
                            states.into_iter().for_each(|state| apply(state));
                        }
                    });
                }
            };
            let url = format!("{}/events", super::objects_path(&slug, &cp));
            if let Some(stream) =
                Stream::open(&url, move |change: ObjectChange| apply(change), on_open)
            {
                let stream = send_wrapper::SendWrapper::new(stream);
                on_cleanup(move || drop(stream));
            }
        });
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = (slug, cp, on_change);
    live
}

/// The newer of the loaded state and the stream's news about the same object.
pub fn latest<'a>(loaded: &'a ObjectChange, heard: Option<&'a ObjectChange>) -> &'a ObjectChange {
    match heard {
        Some(heard) if !is_older(&heard.at, &loaded.at) => heard,
        _ => loaded,
    }
}

/// A memo of the newest state of the object `loaded` describes.
pub fn current(live: ObjectLive, loaded: ObjectChange) -> Memo<ObjectChange> {
    let key = loaded.key();
    Memo::new(move |_| live.with(|heard| latest(&loaded, heard.get(&key)).clone()))
}

/// Records `change` unless the map already knows something newer; whether it changed the map.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
fn merge(map: &mut HashMap<ObjectKey, ObjectChange>, change: &ObjectChange) -> bool {
    let key = change.key();
    match map.get(&key) {
        Some(known) if known == change || is_older(&change.at, &known.at) => false,
        _ => {
            map.insert(key, change.clone());
            true
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::orgs::control_planes::objects::Phase;

    fn change(phase: &str, at: &str) -> ObjectChange {
        ObjectChange {
            kind: "Workload".into(),
            name: "web".into(),
            phase: Phase(phase.into()),
            message: None,
            generation: 1,
            observed_generation: 1,
            deleted: false,
            at: at.into(),
        }
    }

    #[test]
    fn newer_changes_win_and_older_ones_are_ignored() {
        let loaded = change("PROVISIONING", "2026-01-01T00:00:01Z");
        let ready = change("READY", "2026-01-01T00:00:02Z");
        let stale = change("PENDING", "2026-01-01T00:00:00Z");
        assert_eq!(latest(&loaded, Some(&ready)).phase.as_str(), "READY");
        assert_eq!(latest(&loaded, Some(&stale)).phase.as_str(), "PROVISIONING");
        let mut map = HashMap::new();
        assert!(merge(&mut map, &ready));
        assert!(!merge(&mut map, &ready));
        assert!(!merge(&mut map, &stale));
        assert_eq!(
            map[&ObjectKey::new("Workload", "web")].phase.as_str(),
            "READY"
        );
    }
}
