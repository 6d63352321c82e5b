//! Logging what a peer can cause over and over (refused sockets, failed
//! writes) without letting the peer fill the log: a count, logged at most
//! once per period.

use std::time::{Duration, Instant};

/// Counts events and says when to log them: at most once per period.
pub(crate) struct Throttle {
    period: Duration,
    last: Option<Instant>,
    count: u64,
}

impl Throttle {
    pub(crate) const fn new(period: Duration) -> Throttle {
        Throttle {
            period,
            last: None,
            count: 0,
        }
    }

    /// Counts one event; the count so far when it is time to log.
    pub(crate) fn tick(&mut self) -> Option<u64> {
        self.count += 1;
        let now = Instant::now();
        if self.last.is_some_and(|at| now < at + self.period) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_logs_once_a_period_with_the_count() {
        let mut t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.tick(), Some(1));
        assert_eq!((t.tick(), t.tick()), (None, None));
    }
}
