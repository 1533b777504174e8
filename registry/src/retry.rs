//! The one retry policy for registry requests: a failing or overloaded registry (5xx, 429,
//! resets, timeouts) is asked again after an exponential, jittered delay, within a total
//! time budget so a dead registry fails a pull in bounded time. A 429's `Retry-After` is
//! honoured (within the budget). Other 4xx are never retried here; the one exception, a 401
//! that renews a token, is the auth layer's (`client`).

use std::time::{Duration, Instant};

use rand::Rng as _;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// How often and how long to keep asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means never retry.
    pub attempts: u32,
    /// The delay before the first retry; doubled for each further one.
    pub base_delay: Duration,
    /// No single delay is longer.
    pub max_delay: Duration,
    /// No retry starts once this long has passed since the first attempt, and no delay
    /// (not even a `Retry-After`) runs past it.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    /// Four attempts over at most about 15 s: rides out a registry restart or a burst of
    /// 503s without holding a pull for long when the registry is really down.
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            budget: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// One attempt: for callers that run their own retry loop across several sources.
    pub fn none() -> Self {
        RetryPolicy {
            attempts: 1,
            ..Default::default()
        }
    }

    /// `attempt` made once, and again while the policy allows: `retry_in` tells of an outcome
    /// whether it is worth asking again (`None`: final) and, if so, how long the server asked
    /// us to wait (`Some(None)`: it did not say). The last outcome is returned as it is.
    pub async fn run<T, F, Fut>(
        &self,
        mut attempt: F,
        retry_in: impl Fn(&T) -> Option<Option<Duration>>,
    ) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let started = Instant::now();
        let mut retry = 0;
        loop {
            retry += 1;
            let outcome = attempt().await;
            let Some(wish) = retry_in(&outcome) else {
                return outcome;
            };
            let Some(wait) = self.delay(retry, started, wish) else {
                return outcome;
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The delay before retry number `retry` (1 for the first), or `None` when the attempts
    /// or the budget (counted from `started`) are used up. `retry_after` is the server's own
    /// wish, taken as is when it fits the budget.
    pub fn delay(
        &self,
        retry: u32,
        started: Instant,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        if retry >= self.attempts {
            return None;
        }
        let left = self.budget.checked_sub(started.elapsed())?;
        let delay = match retry_after {
            Some(d) => d,
            None => {
                let exp = self
                    .base_delay
                    .saturating_mul(1 << (retry - 1).min(16))
                    .min(self.max_delay);
                // Full jitter on the upper half: clients that failed together do not all
                // come back together.
                let half = exp / 2;
                half + rand::rng().random_range(Duration::ZERO..=half)
            }
        };
        (delay <= left).then_some(delay)
    }
}

/// A `Retry-After` in seconds (the form registries send); an HTTP date is ignored and the
/// backoff used instead.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_exponentially_within_limits() {
        let p = RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            budget: Duration::from_secs(10),
        };
        let now = Instant::now();
        for (retry, max) in [(1, 100), (2, 200), (3, 300), (4, 300)] {
            let d = p.delay(retry, now, None).unwrap();
            let max = Duration::from_millis(max);
            assert!(d >= max / 2 && d <= max, "retry {retry}: {d:?}");
        }
        assert_eq!(p.delay(5, now, None), None, "attempts used up");
        assert_eq!(
            p.delay(1, now, Some(Duration::from_secs(2))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            p.delay(1, now, Some(Duration::from_secs(60))),
            None,
            "a Retry-After past the budget is not waited for"
        );
        let late = now - Duration::from_secs(11);
        assert_eq!(p.delay(1, late, None), None, "budget used up");
        assert_eq!(RetryPolicy::none().delay(1, now, None), None);
    }

    #[test]
    fn reads_retry_after() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
