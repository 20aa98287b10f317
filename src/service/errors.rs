//! Error answers on `P/error` (and on a request's MQTT 5 response topic), with the echoed id and
//! message cut to a bounded length.

use std::sync::Arc;

use serde::Serialize;

use super::answers::Answer;
use super::state::{Ctx, lock};
use crate::error_code::ErrorCode;
use crate::mqtt::ReplyTo;

/// Longest request id echoed in an error and in the log, in characters (valid ids have at most
/// [`super::request::MAX_ID_CHARS`]).
const MAX_ECHO_ID: usize = 160;
/// Longest error message published and logged, in characters.
const MAX_ECHO_MESSAGE: usize = 1000;
/// `P/error` payload.
#[derive(Serialize)]
struct ErrorMessage<'a> {
    id: Option<&'a str>,
    code: ErrorCode,
    message: &'a str,
}

impl Ctx {
    /// Publish an error answer on `P/error` (and the reply topic) and count it.
    pub(super) fn error(&self, id: Option<&str>, code: ErrorCode, message: &str, reply: Option<&ReplyTo>) {
        self.error_answer(id, code, message, reply);
    }

    /// [`Ctx::error`], returning the answer (for the answer cache).
    pub(super) fn error_answer(&self, id: Option<&str>, code: ErrorCode, message: &str, reply: Option<&ReplyTo>) -> Answer {
        // An oversized id, key or topic in the input is cut, never echoed in full.
        let id = id.map(|id| clip(id, MAX_ECHO_ID));
        let (id, message) = (id.as_deref(), &*clip(message, MAX_ECHO_MESSAGE));
        log::warn!("error {code} (id {id:?}): {message}");
        lock(&self.shared.stats).summary.errors += 1;
        let body = serde_json::to_vec(&ErrorMessage { id, code, message }).unwrap_or_else(|_| b"{}".to_vec());
        let answer = Answer::Error(Arc::new(body));
        self.publish_answer(id, &answer, reply);
        answer
    }
}

/// `s` cut to `max` characters, with a note of its full length when cut.
fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => s.into(),
        Some((end, _)) => format!("{}... ({} characters in all)", &s[..end], s.chars().count()).into(),
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_long_text_only() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("ééééé", 2), "éé... (5 characters in all)");
    }
}
