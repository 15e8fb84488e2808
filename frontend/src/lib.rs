//! Qleet web UI.
pub fn placeholder() {}
