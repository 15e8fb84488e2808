//! Live statuses: in the browser, the pages follow `GET /orgs/{slug}/control-planes/events`
//! (Server-Sent Events, one JSON [`StatusUpdate`] per change of any of the organisation's
//! control planes). On the server, and without JavaScript, nothing here runs: the page shows
//! the state at load time.
//!
//! Updates land in a [`Live`] map beside the loaded data; a view shows whichever of the two is
//! newer by `updatedAt`, so a reload after a form wins over stream news it already contains.

use std::collections::HashMap;

use leptos::prelude::*;

use super::StatusUpdate;

/// The newest status heard from the stream, by control plane id.
pub type Live = RwSignal<HashMap<String, StatusUpdate>>;

/// Follows the status stream of the organisation `slug` while the calling component lives
/// (in the browser only). `on_update` hears every update that changed the map. Each time the
/// stream (re)connects, the current statuses are fetched and merged too, covering changes
/// made between the page load and the stream opening.
pub fn watch_statuses(slug: Memo<String>, on_update: impl Fn(&StatusUpdate) + 'static) -> Live {
    let live: Live = RwSignal::new(HashMap::new());
    #[cfg(feature = "hydrate")]
    {
        use std::rc::Rc;

        let on_update = Rc::new(on_update);
        Effect::new(move |_| {
            let slug = slug.get();
            let on_update = on_update.clone();
            let apply: Rc<dyn Fn(StatusUpdate)> = Rc::new(move |update: StatusUpdate| {
                let mut changed = false;
                live.maybe_update(|map| {
                    changed = merge(map, &update);
                    changed
                });
                if changed {
                    on_update(&update);
                }
            });
            let on_open = {
                let (apply, slug) = (apply.clone(), slug.clone());
                move || {
                    let (apply, slug) = (apply.clone(), slug.clone());
                    leptos::task::spawn_local(async move {
                        if let Ok(updates) = super::control_plane_statuses(slug).await {
                            updates.into_iter().for_each(|update| apply(update));
                        }
                    });
                }
            };
            let url = format!("{}/events", super::list_path(&slug));
            if let Some(stream) =
                stream::Stream::open(&url, move |update: StatusUpdate| apply(update), on_open)
            {
                // Closed when the page goes away or the organisation changes.
                let stream = send_wrapper::SendWrapper::new(stream);
                on_cleanup(move || drop(stream));
            }
        });
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = (slug, on_update);
    live
}

/// The newer of the loaded status and the stream's news about the same control plane.
pub fn latest<'a>(loaded: &'a StatusUpdate, heard: Option<&'a StatusUpdate>) -> &'a StatusUpdate {
    match heard {
        Some(heard) if !is_older(&heard.updated_at, &loaded.updated_at) => heard,
        _ => loaded,
    }
}

/// Records `update` unless the map already knows something newer; whether it changed the map.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
fn merge(map: &mut HashMap<String, StatusUpdate>, update: &StatusUpdate) -> bool {
    match map.get(&update.id) {
        Some(known) if known == update || is_older(&update.updated_at, &known.updated_at) => false,
        _ => {
            map.insert(update.id.clone(), update.clone());
            true
        }
    }
}

/// Whether time `a` is known to be before time `b` (unreadable times are never older).
pub(crate) fn is_older(a: &str, b: &str) -> bool {
    matches!((instant(a), instant(b)), (Some(a), Some(b)) if a < b)
}

/// An RFC 3339 time (`2026-11-26T05:26:09.123Z`, `…+02:00`) as seconds since 1970 and
/// nanoseconds, for ordering; `None` when it is not one.
pub fn instant(value: &str) -> Option<(i64, u32)> {
    let bytes = value.as_bytes();
    let number = |from: usize, to: usize| -> Option<i64> {
        let digits = value.get(from..to)?;
        if digits.bytes().all(|b| b.is_ascii_digit()) {
            digits.parse().ok()
        } else {
            None
        }
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(i, c)| bytes.get(i) != Some(&c))
        || !matches!(bytes.get(10), Some(b'T' | b't' | b' '))
    {
        return None;
    }
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let mut rest = value.get(19..)?;
    let mut nanos = 0u32;
    if let Some(fraction) = rest.strip_prefix('.') {
        let len = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        for (i, digit) in fraction.bytes().take(9).take(len).enumerate() {
            nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &fraction[len..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            let zone = &rest[1..];
            if zone.len() != 5 || zone.as_bytes()[2] != b':' {
                return None;
            }
            let (h, m) = (
                zone[..2].parse::<i64>().ok()?,
                zone[3..].parse::<i64>().ok()?,
            );
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    Some((
        days * 86_400 + hour * 3600 + minute * 60 + second - offset,
        nanos,
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// An `EventSource` whose `data:` lines are JSON values; shared with the object pages.
#[cfg(feature = "hydrate")]
pub(crate) mod stream {
    use serde::de::DeserializeOwned;
    use wasm_bindgen::{JsCast, closure::Closure};
    use web_sys::{EventSource, MessageEvent};

    /// An open `EventSource` and its handlers; closed when dropped.
    pub struct Stream {
        source: EventSource,
        _on_message: Closure<dyn FnMut(MessageEvent)>,
        _on_open: Closure<dyn FnMut()>,
    }

    impl Stream {
        /// Opens `url`; `on_update` hears each decoded `data:` line, `on_open` each
        /// (re)connection. The browser reconnects by itself after network errors.
        pub fn open<T: DeserializeOwned + 'static>(
            url: &str,
            on_update: impl Fn(T) + 'static,
            on_open: impl Fn() + 'static,
        ) -> Option<Stream> {
            let source = EventSource::new(url).ok()?;
            let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
                let Some(text) = event.data().as_string() else {
                    return;
                };
                match serde_json::from_str::<T>(&text) {
                    Ok(update) => on_update(update),
                    Err(error) => leptos::logging::warn!("ignoring a live event ({error})"),
                }
            });
            source.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
            let on_open = Closure::<dyn FnMut()>::new(on_open);
            source.set_onopen(Some(on_open.as_ref().unchecked_ref()));
            Some(Stream {
                source,
                _on_message: on_message,
                _on_open: on_open,
            })
        }
    }

    impl Drop for Stream {
        fn drop(&mut self) {
            self.source.set_onmessage(None);
            self.source.set_onopen(None);
            self.source.close();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::orgs::control_planes::Status;

    fn update(status: &str, at: &str) -> StatusUpdate {
        StatusUpdate {
            id: "cp".into(),
            status: Status(status.into()),
            status_reason: None,
            updated_at: at.into(),
        }
    }

    #[test]
    fn times_order_across_precisions_and_offsets() {
        assert_eq!(instant("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(instant("2000-03-01T00:00:00Z"), Some((951_868_800, 0)));
        assert_eq!(
            instant("2026-11-26T05:26:09.5Z"),
            instant("2026-11-26T07:26:09.500000+02:00")
        );
        assert!(instant("2026-11-26T05:26:09Z") < instant("2026-11-26T05:26:09.001Z"));
        assert_eq!(
            instant("2026-11-26T05:26:09.123456789123Z").unwrap().1,
            123_456_789
        );
        assert_eq!(instant("yesterday"), None);
        assert_eq!(instant("2026-11-26T05:26:09"), None);
    }

    #[test]
    fn newer_news_wins_and_older_is_ignored() {
        let loaded = update("PROVISIONING", "2026-01-01T00:00:01Z");
        let ready = update("READY", "2026-01-01T00:00:02.5Z");
        let stale = update("PENDING", "2026-01-01T00:00:00.9Z");
        assert_eq!(latest(&loaded, Some(&ready)).status.as_str(), "READY");
        assert_eq!(
            latest(&loaded, Some(&stale)).status.as_str(),
            "PROVISIONING"
        );
        assert_eq!(latest(&loaded, None).status.as_str(), "PROVISIONING");

        let mut map = HashMap::new();
        assert!(merge(&mut map, &ready));
        assert!(!merge(&mut map, &ready));
        assert!(!merge(&mut map, &stale));
        assert_eq!(map["cp"].status.as_str(), "READY");
    }
}
