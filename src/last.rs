//! The last answer given for a (name, version) question, kept in front of a
//! map keyed by name so that a run of one name (the common case: a sender
//! sends one message name many times over) is answered by comparing
//! strings instead of hashing them. Used by the router's send-decision
//! cache and the relay's sealing plans.
//!
//! It holds one answer only and never decides anything: its owner puts in
//! what the map (or the policy) answered, and forgets it whenever the map
//! is emptied. The name's buffer is reused, so a miss allocates only when
//! a name is longer than any before it.

/// The last question asked by name and version, and its answer.
#[derive(Debug)]
pub(crate) struct LastAnswer<T> {
    name: String,
    answer: Option<(u32, T)>,
}

impl<T> Default for LastAnswer<T> {
    fn default() -> Self {
        LastAnswer { name: String::new(), answer: None }
    }
}

impl<T> LastAnswer<T> {
    /// The answer for `name` at `version`, if that was the last question.
    pub(crate) fn get(&self, name: &str, version: u32) -> Option<&T> {
        match &self.answer {
            Some((v, answer)) if *v == version && self.name == name => Some(answer),
            _ => None,
        }
    }

    /// Keeps `answer` as the answer for `name` at `version`.
    pub(crate) fn set(&mut self, name: &str, version: u32, answer: T) {
        self.name.clear();
        self.name.push_str(name);
        self.answer = Some((version, answer));
    }

    /// Forgets the answer (its owner's map was emptied).
    pub(crate) fn forget(&mut self) {
        self.answer = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_the_last_question() {
        let mut last = LastAnswer::default();
        assert_eq!(last.get("a.b", 1), None);
        last.set("a.b", 1, 10);
        assert_eq!(last.get("a.b", 1), Some(&10));
        assert_eq!(last.get("a.b", 2), None, "another version");
        assert_eq!(last.get("a.c", 1), None, "another name");
        last.set("a.c", 1, 20);
        assert_eq!(last.get("a.b", 1), None, "only one answer is kept");
        assert_eq!(last.get("a.c", 1), Some(&20));
        last.forget();
        assert_eq!(last.get("a.c", 1), None);
    }
}
