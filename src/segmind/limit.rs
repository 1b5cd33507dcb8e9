//! How fast tunehook reads Segmind's API. The confirmer and the reconciler
//! ask with clones of one client, and every clone shares one [`Limiter`]:
//! one allowance for the one API key, whoever spends it. It is a token
//! bucket (`segmind.max_requests_per_second`, `segmind.burst`) and
//! Segmind's own word: after a 429, no call waits its turn until the wait
//! Segmind asked for (`Retry-After`) is over. So forged webhooks cost the
//! key at most the bucket's rate, and never push it into a 429 storm.
//!
//! A std `Mutex` guards a few numbers and is never held across an await.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// The wait after a 429 that names none.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(5);
/// The longest wait honoured: a `Retry-After` further out than this (a
/// wrong clock, a proxy's mistake) would otherwise stop every read as long.
pub const LONGEST_PAUSE: Duration = Duration::from_secs(3600);

/// Float error tolerated when counting tokens.
const ROUNDING: f64 = 1e-9;

/// The pace of calls one API key allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Calls per second, sustained.
    pub per_second: f64,
    /// Calls that may go at once after a quiet spell.
    pub burst: u32,
}

/// Why a call cannot go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The bucket is empty: the next token comes after this long.
    Empty(Duration),
    /// Segmind asked to wait: no call for this long.
    Paused(Duration),
}

#[derive(Debug)]
pub struct Limiter {
    per_second: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    /// When `tokens` was last brought up to date (after a 429, the end of
    /// the pause: no token accrues during it).
    at: Instant,
    /// No call before this: the end of Segmind's wait after a 429.
    paused_until: Option<Instant>,
}

impl Limiter {
    /// A full bucket at `now`.
    pub fn new(limit: RateLimit, now: Instant) -> Limiter {
        let burst = f64::from(limit.burst.max(1));
        Limiter {
            per_second: limit.per_second,
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                at: now,
                paused_until: None,
            }),
        }
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        // The numbers stay consistent whatever panicked elsewhere.
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a token at `now`, or says how long until a call may go.
    pub fn try_take(&self, now: Instant) -> Result<(), Wait> {
        let mut bucket = self.bucket();
        if let Some(until) = bucket.paused_until {
            if now < until {
                return Err(Wait::Paused(until - now));
            }
            bucket.paused_until = None;
        }
        if now > bucket.at {
            let earned = now.duration_since(bucket.at).as_secs_f64() * self.per_second;
            bucket.tokens = (bucket.tokens + earned).min(self.burst);
            bucket.at = now;
        }
        // A token earned in steps may add up to a hair under one.
        if bucket.tokens >= 1.0 - ROUNDING {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let missing = (1.0 - bucket.tokens) / self.per_second;
        Err(Wait::Empty(
            Duration::try_from_secs_f64(missing).unwrap_or(LONGEST_PAUSE),
        ))
    }

    /// Segmind answered 429 at `now`, asking for `wait` (or naming none):
    /// no call until it is over, then calls at the steady rate, not in a
    /// burst that would earn the next 429. A later 429 may lengthen the
    /// pause, never shorten it.
    pub fn pause(&self, now: Instant, wait: Option<Duration>) {
        let until = now + wait.unwrap_or(DEFAULT_PAUSE).min(LONGEST_PAUSE);
        let mut bucket = self.bucket();
        let until = bucket
            .paused_until
            .map_or(until, |earlier| earlier.max(until));
        bucket.paused_until = Some(until);
        bucket.tokens = bucket.tokens.min(1.0);
        bucket.at = bucket.at.max(until);
    }

    /// Waits for a token; refused at once, with the time left, while
    /// Segmind's wait runs (a caller should not sit on it).
    pub async fn take(&self) -> Result<(), Duration> {
        loop {
            match self.try_take(Instant::now()) {
                Ok(()) => return Ok(()),
                Err(Wait::Paused(left)) => return Err(left),
                Err(Wait::Empty(wait)) => tokio::time::sleep(wait).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE_A_SECOND: RateLimit = RateLimit {
        per_second: 5.0,
        burst: 3,
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// An empty bucket's wait, to the microsecond (tokens are floats).
    fn empty_for(answer: Result<(), Wait>) -> Duration {
        match answer {
            Err(Wait::Empty(wait)) => {
                Duration::from_micros((wait.as_secs_f64() * 1e6).round() as u64)
            }
            other => panic!("expected an empty bucket, got {other:?}"),
        }
    }

    #[test]
    fn a_full_bucket_lets_a_burst_go_and_then_one_call_per_interval() {
        let t0 = Instant::now();
        let limiter = Limiter::new(FIVE_A_SECOND, t0);
        for _ in 0..3 {
            assert_eq!(limiter.try_take(t0), Ok(()));
        }
        assert_eq!(empty_for(limiter.try_take(t0)), ms(200));
        assert_eq!(empty_for(limiter.try_take(t0 + ms(150))), ms(50));
        assert_eq!(limiter.try_take(t0 + ms(200)), Ok(()));
        assert!(matches!(
            limiter.try_take(t0 + ms(200)),
            Err(Wait::Empty(_))
        ));
    }

    #[test]
    fn a_quiet_spell_refills_the_bucket_only_up_to_the_burst() {
        let t0 = Instant::now();
        let limiter = Limiter::new(FIVE_A_SECOND, t0);
        let later = t0 + Duration::from_secs(60);
        let went = (0..10).filter(|_| limiter.try_take(later).is_ok()).count();
        assert_eq!(went, 3);
    }

    #[test]
    fn after_a_429_no_call_goes_until_the_wait_is_over_then_calls_resume_at_the_steady_rate() {
        let t0 = Instant::now();
        let limiter = Limiter::new(FIVE_A_SECOND, t0);
        limiter.pause(t0, Some(Duration::from_secs(2)));
        assert_eq!(limiter.try_take(t0 + ms(500)), Err(Wait::Paused(ms(1500))));
        // Tokens do not pile up during the pause.
        let end = t0 + Duration::from_secs(2);
        assert_eq!(limiter.try_take(end), Ok(()));
        assert_eq!(empty_for(limiter.try_take(end)), ms(200));
    }

    #[test]
    fn a_pause_is_never_shortened_and_has_a_default_and_a_ceiling() {
        let t0 = Instant::now();
        let limiter = Limiter::new(FIVE_A_SECOND, t0);
        limiter.pause(t0, Some(Duration::from_secs(10)));
        limiter.pause(t0, Some(Duration::from_secs(1)));
        assert_eq!(
            limiter.try_take(t0 + Duration::from_secs(5)),
            Err(Wait::Paused(Duration::from_secs(5)))
        );

        let named_none = Limiter::new(FIVE_A_SECOND, t0);
        named_none.pause(t0, None);
        assert_eq!(named_none.try_take(t0), Err(Wait::Paused(DEFAULT_PAUSE)));

        let absurd = Limiter::new(FIVE_A_SECOND, t0);
        absurd.pause(t0, Some(Duration::from_secs(86_400 * 365)));
        assert_eq!(absurd.try_take(t0), Err(Wait::Paused(LONGEST_PAUSE)));
    }

    #[tokio::test]
    async fn take_waits_for_a_token_but_not_for_a_pause() {
        let limiter = Limiter::new(
            RateLimit {
                per_second: 20.0,
                burst: 1,
            },
            Instant::now(),
        );
        assert_eq!(limiter.take().await, Ok(()));
        let started = Instant::now();
        assert_eq!(limiter.take().await, Ok(()));
        assert!(started.elapsed() >= ms(40), "{:?}", started.elapsed());

        limiter.pause(Instant::now(), Some(Duration::from_secs(30)));
        let left = limiter.take().await.expect_err("refused during the pause");
        assert!(left > Duration::from_secs(29), "{left:?}");
    }
}
