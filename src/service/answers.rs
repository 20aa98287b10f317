//! Idempotent retries: the answers of recently answered requests, kept so that a request id sent
//! again (a client retrying after a lost connection, a broker redelivering) gets the same answer
//! again instead of silence or a second generation (README "Idempotent retries").
//!
//! Bounded twice: by the bytes of the answers (`limits.answer_cache_bytes`) and by their number
//! (`limits.recent_ids`); the oldest answers are forgotten first. An id no longer kept is
//! generated again when it comes back.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::state::Ctx;
use crate::mqtt::{Content, ReplyTo};

/// The answer a request got: the PNG published on `P/image/<id>`, or the JSON published on
/// `P/error`. Payloads are shared, so a replay does not copy them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Answer {
    /// PNG bytes.
    Image(Arc<Vec<u8>>),
    /// `{"id", "code", "message"}` JSON bytes.
    Error(Arc<Vec<u8>>),
}

impl Answer {
    fn payload(&self) -> &Arc<Vec<u8>> {
        match self {
            Answer::Image(p) | Answer::Error(p) => p,
        }
    }

    /// Bytes it takes in the cache: its payload and its id.
    fn cost(&self, id: &str) -> usize {
        self.payload().len() + id.len()
    }
}

/// Recent answers by request id, oldest forgotten first.
pub(super) struct AnswerCache {
    answers: HashMap<String, Answer>,
    order: VecDeque<String>,
    bytes: usize,
    max_bytes: usize,
    max_answers: usize,
}

impl AnswerCache {
    /// A cache of at most `max_bytes` bytes of answers and `max_answers` answers (either 0 keeps
    /// nothing).
    pub(super) fn new(max_bytes: usize, max_answers: usize) -> Self {
        AnswerCache { answers: HashMap::new(), order: VecDeque::new(), bytes: 0, max_bytes, max_answers }
    }

    /// The answer of `id`, if it is still kept.
    pub(super) fn get(&self, id: &str) -> Option<Answer> {
        self.answers.get(id).cloned()
    }

    /// Keep `answer` as the answer of `id` (replacing an older one), forgetting the oldest answers
    /// beyond the bounds; an answer larger than the whole cache is not kept.
    pub(super) fn insert(&mut self, id: &str, answer: Answer) {
        self.remove(id);
        let cost = answer.cost(id);
        if cost > self.max_bytes || self.max_answers == 0 {
            return;
        }
        self.bytes += cost;
        self.answers.insert(id.to_string(), answer);
        self.order.push_back(id.to_string());
        while self.bytes > self.max_bytes || self.answers.len() > self.max_answers {
            let Some(old) = self.order.pop_front() else { break };
            self.remove(&old);
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.answers.remove(id) {
            self.bytes -= old.cost(id);
            self.order.retain(|o| o != id);
        }
    }

    /// Bytes of the answers kept.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Ctx {
    /// Publish `answer`: an image on `P/image/<id>` (`P/image` for a stream frame, `id` None),
    /// an error on `P/error`; and either on the request's MQTT 5 response topic when it gave one.
    /// Failures are logged.
    pub(super) fn publish_answer(&self, id: Option<&str>, answer: &Answer, reply: Option<&ReplyTo>) {
        let (topic, content) = match (answer, id) {
            (Answer::Image(_), Some(id)) => (format!("{}image/{id}", self.prefix), Content::Png),
            (Answer::Image(_), None) => (format!("{}image", self.prefix), Content::Png),
            (Answer::Error(_), _) => (format!("{}error", self.prefix), Content::Json),
        };
        let payload = answer.payload();
        if let Err(e) = self.out.publish(&topic, payload.to_vec(), false, None) {
            log::error!("request {id:?}: cannot publish the answer: {e}");
        }
        if let Some(r) = reply
            && let Err(e) = self.out.publish(&r.topic, payload.to_vec(), false, Some(r.props(content)))
        {
            log::warn!("request {id:?}: cannot publish to the response topic: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(n: usize) -> Answer {
        Answer::Image(Arc::new(vec![7; n]))
    }

    #[test]
    fn keeps_answers_within_bytes_and_count_forgetting_the_oldest() {
        let mut c = AnswerCache::new(100, 3);
        c.insert("a", image(40)); // 41 bytes with its id
        c.insert("b", Answer::Error(Arc::new(b"{}".to_vec())));
        assert_eq!(c.get("a"), Some(image(40)));
        assert_eq!(c.bytes(), 41 + 3);
        c.insert("c", image(50)); // 44 + 51 = 95
        assert!(c.get("a").is_some() && c.get("c").is_some());
        c.insert("d", image(10)); // 95 + 11 > 100: "a" goes
        assert_eq!(c.get("a"), None);
        assert!(c.get("b").is_some() && c.get("c").is_some() && c.get("d").is_some());
        assert_eq!(c.bytes(), 3 + 51 + 11);
        // Count bound: a fourth answer drops the oldest ("b").
        c.insert("e", image(1));
        assert_eq!(c.get("b"), None);
        assert_eq!(c.answers.len(), 3);
        // Replacing an id re-counts its bytes; an answer larger than the cache is not kept.
        c.insert("e", image(5));
        assert_eq!(c.bytes(), 51 + 11 + 6);
        c.insert("huge", image(200));
        assert_eq!(c.get("huge"), None);
        assert_eq!(c.bytes(), 51 + 11 + 6);
    }

    #[test]
    fn a_zero_sized_cache_keeps_nothing() {
        let mut c = AnswerCache::new(0, 10);
        c.insert("a", image(1));
        assert_eq!((c.get("a"), c.bytes()), (None, 0));
        let mut c = AnswerCache::new(100, 0);
        c.insert("a", image(1));
        assert_eq!(c.get("a"), None);
    }
}
