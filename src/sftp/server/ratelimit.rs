//! A token bucket: the request-rate cap of one SSH session (pure; the caller passes the time).
//!
//! Every SFTP request and every SSH channel request of a session takes one token. The bucket
//! holds at most `burst` tokens and refills at `rate` per second; a session that finds it
//! empty is flooding and is disconnected, which costs the other sessions nothing.
//!
//! Hand-written, not `governor`: a bucket that is given the time is thirty lines, tested
//! without a clock, while `governor` brings its own clock and rate algebra for one counter
//! per session.

use std::time::Instant;

#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate_per_sec: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: rate_per_sec.max(0.0),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token; false when the bucket is empty.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        assert!(b.take(t0));
        assert!(b.take(t0));
        assert!(b.take(t0));
        assert!(!b.take(t0), "burst of 3 exhausted");
        // 100 ms at 10/s gives one token back.
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        assert!(b.take(later) && b.take(later) && b.take(later));
        assert!(!b.take(later));
    }

    #[test]
    fn steady_rate_below_cap_never_trips() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 10, t0);
        for i in 0..10_000u64 {
            // one request every 20 ms = 50/s, half the cap
            assert!(b.take(t0 + Duration::from_millis(20 * i)), "request {i}");
        }
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(1.0, 1, t0);
        assert!(b.take(t0));
        assert!(!b.take(t0 - Duration::from_secs(5)));
    }
}
