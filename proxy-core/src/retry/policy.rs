//! What a retry policy decides: whether a result may be retried, how long to wait first,
//! and whether the budget allows it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use tower::retry::budget::{Budget as _, TpsBudget};

use crate::body::Body;
use crate::classify::Classifier;
use crate::error::{find_cause, ProxyError, Reason};
use crate::BoxError;

/// Told about retries, for metrics.
pub trait RetryObserver: Send + Sync + fmt::Debug {
    /// A retry is about to be sent.
    fn retried(&self);
    /// A retry was wanted but the budget had none left.
    fn budget_exhausted(&self);
}

/// Exponential backoff between tries, with jitter so that many clients retrying together
/// do not arrive together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The wait before the first retry (before jitter).
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The wait before retry number `retry` (1-based): `base * 2^(retry-1)`, capped at `max`,
    /// then a random point in its upper half.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max);
        let half = exp / 2;
        let jitter = (u128::from(crate::random_u64()) % (half.as_nanos().max(1))) as u64;
        half + Duration::from_nanos(jitter)
    }
}

/// How much extra load retries may add: `ratio` of the requests seen over `ttl`, plus
/// `min_per_second` so a quiet service can still retry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetParams {
    /// Retries allowed per original request (0.2 = 20% extra load); 0 to 10.
    pub ratio: f32,
    /// Retries allowed per second regardless of traffic.
    pub min_per_second: u32,
    /// How long a request counts towards the budget; 1 to 60 seconds.
    pub ttl: Duration,
}

/// A retry policy: the settings plus the live budget.
pub struct Policy {
    /// Retries after the first try.
    pub retries: u32,
    /// Which results are retryable failures.
    pub classifier: Classifier,
    /// Waits between tries.
    pub backoff: Backoff,
    /// Retry non-idempotent methods (POST, PATCH) on failures other than connect errors.
    pub non_idempotent: bool,
    /// Largest request body kept for replay; a larger one is sent once, never retried.
    pub max_replay_bytes: usize,
    budget: TpsBudget,
    observer: Arc<dyn RetryObserver>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("retries", &self.retries)
            .field("classifier", &self.classifier)
            .field("backoff", &self.backoff)
            .field("non_idempotent", &self.non_idempotent)
            .finish_non_exhaustive()
    }
}

/// The default replay buffer: bodies up to 64 KiB can be retried.
pub const DEFAULT_MAX_REPLAY_BYTES: usize = 64 * 1024;

impl Policy {
    /// A policy. `budget` must be within the documented ranges (config parsing ensures it).
    pub fn new(
        retries: u32,
        classifier: Classifier,
        backoff: Backoff,
        non_idempotent: bool,
        budget: BudgetParams,
        observer: Arc<dyn RetryObserver>,
    ) -> Self {
        Self {
            retries,
            classifier,
            backoff,
            non_idempotent,
            max_replay_bytes: DEFAULT_MAX_REPLAY_BYTES,
            budget: TpsBudget::new(budget.ttl, budget.min_per_second, budget.ratio),
            observer,
        }
    }

    /// Whether `result` may be retried: the policy's classifier must call it a retryable
    /// failure, and the request must be idempotent, unless it failed to connect (nothing
    /// was sent, so even a POST cannot have been processed).
    pub fn is_retryable(
        &self,
        result: &Result<Response<Body>, BoxError>,
        idempotent: bool,
    ) -> bool {
        match result {
            Err(e) => {
                let nothing_sent = find_cause::<ProxyError>(e.as_ref())
                    .is_some_and(|e| e.reason() == Reason::UpstreamConnect);
                (idempotent || nothing_sent)
                    && self.classifier.classify_error(e.as_ref()).is_retryable()
            }
            Ok(rsp) => idempotent && self.classifier.classify_response(rsp).is_retryable(),
        }
    }

    pub(super) fn deposit(&self) {
        self.budget.deposit();
    }

    /// Takes one retry from the budget, telling the observer when there is none.
    pub(super) fn withdraw(&self) -> bool {
        let ok = self.budget.withdraw();
        if ok {
            self.observer.retried();
        } else {
            self.observer.budget_exhausted();
        }
        ok
    }
}
