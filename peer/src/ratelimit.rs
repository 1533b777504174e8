//! Byte-rate limits (`--upload-rate`, `--download-rate`) as token buckets from `governor`.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use shoal_common::ByteRate;

/// Shared by every transfer in one direction; unlimited when built from a zero rate.
pub struct RateLimit {
    limiter: Option<(DefaultDirectRateLimiter, u32)>,
}

impl RateLimit {
    pub fn new(rate: ByteRate) -> Self {
        let limiter = (!rate.is_unlimited()).then(|| {
            let per_sec = u32::try_from(rate.0).unwrap_or(u32::MAX).max(1);
            // A burst of 1/20 s keeps shaping smooth while allowing 64 KiB reads at once.
            let burst = (per_sec / 20).max(64 * 1024);
            let quota = Quota::per_second(NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
            (RateLimiter::direct(quota), burst)
        });
        RateLimit { limiter }
    }

    pub fn unlimited() -> Self {
        RateLimit { limiter: None }
    }

    /// Waits until `bytes` may pass.
    pub async fn consume(&self, bytes: usize) {
        let Some((limiter, burst)) = &self.limiter else {
            return;
        };
        let mut left = u32::try_from(bytes).unwrap_or(u32::MAX);
        while left > 0 {
            let n = left.min(*burst);
            if let Some(n) = NonZeroU32::new(n) {
                // n ≤ burst, so capacity is always sufficient.
                let _ = limiter.until_n_ready(n).await;
            }
            left -= n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn limits_throughput() {
        let l = RateLimit::new(ByteRate(1 << 20));
        let start = Instant::now();
        // The first burst is free; 1 MiB more must take about a second.
        for _ in 0..24 {
            l.consume(64 * 1024).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!(elapsed > 0.4, "{elapsed}");
        RateLimit::unlimited().consume(1 << 30).await;
    }
}
