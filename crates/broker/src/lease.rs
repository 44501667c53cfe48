//! A broker's lease on what its metadata says it leads, for answers its coordinators give
//! from memory. The active controller answers a heartbeat only once a quorum has confirmed
//! it still leads (a confirmation it may reuse for a while, and says how old it is), with
//! the metadata offset it had applied. The lease runs one session from the heartbeat's
//! send, less that confirmation's age, and counts only once this node's metadata has
//! reached the offset. Why that is safe: a successor controller is elected no sooner than
//! an election timeout after the last confirmation, and then gives every broker a whole
//! session before fencing it; so this lease ends before anyone else can be given what this
//! node leads.

use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone, Copy)]
pub struct Lease {
    /// When the lease started (the send, less the confirmation's age) and the metadata
    /// offset this node must have reached; none after a fenced answer.
    granted: Option<(Instant, u64)>,
}

impl Lease {
    /// A heartbeat sent at `sent` was answered: `fenced` or not, with the controller's
    /// applied `metadata_offset` and the age of its leadership confirmation.
    pub fn on_answer(
        &mut self,
        sent: Instant,
        fenced: bool,
        metadata_offset: u64,
        confirmed_ago: Duration,
    ) {
        self.granted = sent
            .checked_sub(confirmed_ago)
            .filter(|_| !fenced)
            .map(|start| (start, metadata_offset));
    }

    /// Whether the lease holds at `now`, for a session of `session`, with this node's
    /// metadata at `image_offset`.
    pub fn holds(&self, now: Instant, session: Duration, image_offset: u64) -> bool {
        self.granted.is_some_and(|(start, offset)| {
            now.saturating_duration_since(start) < session && image_offset >= offset
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: Duration = Duration::from_millis(9_000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_lease_before_a_first_answer() {
        assert!(!Lease::default().holds(Instant::now(), SESSION, u64::MAX));
    }

    #[test]
    fn a_lease_holds_once_the_metadata_caught_up_and_until_the_session_from_the_send() {
        let sent = Instant::now();
        let mut l = Lease::default();
        l.on_answer(sent, false, 40, Duration::ZERO);
        assert!(
            !l.holds(sent + ms(10), SESSION, 39),
            "metadata behind the controller's"
        );
        assert!(l.holds(sent + ms(10), SESSION, 40));
        assert!(l.holds(sent + ms(8_999), SESSION, 41));
        // Counted from the send, not the answer: a slow answer does not stretch it.
        assert!(!l.holds(sent + SESSION, SESSION, 41));
    }

    #[test]
    fn an_old_confirmation_shortens_the_lease_by_its_age() {
        let sent = Instant::now() + ms(5_000);
        let mut l = Lease::default();
        l.on_answer(sent, false, 1, ms(2_000));
        assert!(l.holds(sent + ms(6_999), SESSION, 1));
        assert!(!l.holds(sent + ms(7_000), SESSION, 1));
    }

    #[test]
    fn a_fenced_answer_ends_the_lease_and_a_later_one_renews_it() {
        let sent = Instant::now();
        let mut l = Lease::default();
        l.on_answer(sent, false, 1, Duration::ZERO);
        l.on_answer(sent + ms(100), true, 2, Duration::ZERO);
        assert!(!l.holds(sent + ms(200), SESSION, 2));
        l.on_answer(sent + ms(300), false, 3, Duration::ZERO);
        assert!(l.holds(sent + ms(400), SESSION, 3));
    }

    #[test]
    fn without_answers_the_lease_runs_out() {
        // A node paused, or cut off from the controller: heartbeats go unanswered, so
        // nothing renews the lease, and it ends one session after the last send.
        let sent = Instant::now();
        let mut l = Lease::default();
        l.on_answer(sent, false, 1, Duration::ZERO);
        assert!(l.holds(sent + ms(8_000), SESSION, 1));
        assert!(!l.holds(sent + ms(9_500), SESSION, 1));
    }
}
