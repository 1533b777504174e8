//! Memory budgets, in bytes, shared by everything that buffers: piece buffers of all
//! downloads (a piece is held whole in memory from the first byte until its sha256 is checked
//! and it is written, so without a shared bound a hundred concurrent downloads would each
//! buffer their in-flight pieces), and the chunks read from the cache and on their way to
//! clients and peers (a thousand clients of one blob would otherwise each have their
//! connection's write buffer full). Waiting for a budget is fair (first come, first served),
//! so one large download or one fast client cannot starve the others: excess readers queue.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget granularity.
const UNIT: u64 = 64 << 10;

#[derive(Clone)]
pub struct MemoryBudget {
    /// Free units of [`UNIT`] bytes.
    permits: Arc<Semaphore>,
    total: u32,
}

impl MemoryBudget {
    /// A budget of `bytes` (rounded down to 64 KiB, at least one unit).
    pub fn new(bytes: u64) -> Self {
        let total = u32::try_from(bytes / UNIT).unwrap_or(u32::MAX).max(1);
        MemoryBudget {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until a buffer of `len` bytes fits in the budget; held until the guard drops.
    /// A piece larger than the whole budget waits for all of it. `None` only if the budget
    /// was closed.
    pub async fn reserve(&self, len: u64) -> Option<OwnedSemaphorePermit> {
        let units = u32::try_from(len.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total);
        self.permits.clone().acquire_many_owned(units).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn bounded_and_fair() {
        let m = MemoryBudget::new(4 << 20);
        let a = m.reserve(3 << 20).await.unwrap();
        // 2 MiB do not fit beside 3 MiB of 4 MiB: waits until `a` is released.
        let waiting = tokio::time::timeout(Duration::from_millis(50), m.reserve(2 << 20)).await;
        assert!(waiting.is_err());
        drop(a);
        let _b = m.reserve(2 << 20).await.unwrap();
        // Larger than the whole budget: takes all of it rather than never fitting.
        drop(_b);
        let _c = m.reserve(64 << 20).await.unwrap();
    }
}
