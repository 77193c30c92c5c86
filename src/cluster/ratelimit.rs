//! The client's request budget, as client-go's token bucket: `burst`
//! requests at once, refilled at `qps` per second.
//!
//! Not tower's `RateLimit`: that one grants `burst` requests per fixed
//! window of `burst / qps` seconds, counted from the window's first
//! request. An agent that made a few requests at start-up and then sat idle
//! found most of its window used when 100 pods arrived, and the last status
//! writes waited for the next window (1.5 s in the cluster benchmark). A
//! bucket refills while idle, so a burst after a quiet second gets the
//! whole `burst`, and over time no more than `qps` go out.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// The bucket's arithmetic, apart from any clock.
#[derive(Debug, Clone)]
pub struct Bucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(qps: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Bucket {
            qps: f64::from(qps.max(1)),
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes one token at `now`; how long the request must wait for it
    /// (tokens are reserved in order, so waiting requests keep their turn).
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.qps;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.at = self.at.max(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.qps)
        }
    }
}

/// Layer adding a [`Bucket`] in front of a service.
#[derive(Debug, Clone)]
pub struct TokenBucketLayer {
    qps: u32,
    burst: u32,
}

impl TokenBucketLayer {
    /// `burst` requests at once, `qps` per second after.
    pub fn new(qps: u32, burst: u32) -> Self {
        TokenBucketLayer { qps, burst }
    }
}

impl<S> tower::Layer<S> for TokenBucketLayer {
    type Service = TokenBucket<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenBucket {
            inner,
            bucket: Bucket::new(self.qps, self.burst, Instant::now()),
            reserved: false,
            wait: None,
        }
    }
}

/// A service whose readiness waits for a token.
pub struct TokenBucket<S> {
    inner: S,
    bucket: Bucket,
    /// A token is taken for the next call.
    reserved: bool,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S, R> tower::Service<R> for TokenBucket<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.reserved {
            self.reserved = true;
            let wait = self.bucket.reserve(Instant::now());
            if !wait.is_zero() {
                self.wait = Some(Box::pin(tokio::time::sleep(wait)));
            }
        }
        if let Some(wait) = &mut self.wait {
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.wait = None;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.reserved = false;
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_grants_the_burst_at_once_then_qps() {
        let t0 = Instant::now();
        let mut b = Bucket::new(50, 100, t0);
        for _ in 0..100 {
            assert_eq!(b.reserve(t0), Duration::ZERO);
        }
        // The 101st waits one token's time, the 150th 50 of them.
        assert_eq!(b.reserve(t0), Duration::from_millis(20));
        for _ in 0..48 {
            b.reserve(t0);
        }
        let w = b.reserve(t0);
        assert!((w.as_secs_f64() - 1.0).abs() < 1e-9, "{w:?}");
    }

    #[test]
    fn an_idle_bucket_refills_up_to_the_burst_only() {
        let t0 = Instant::now();
        let mut b = Bucket::new(50, 100, t0);
        for _ in 0..10 {
            b.reserve(t0);
        }
        // After a quiet second the whole burst is back (tower's fixed
        // window would still count the 10), and never more than it.
        let t1 = t0 + Duration::from_secs(60);
        for _ in 0..100 {
            assert_eq!(b.reserve(t1), Duration::ZERO);
        }
        assert!(b.reserve(t1) > Duration::ZERO);
    }

    #[test]
    fn over_time_no_more_than_qps_go_out() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 5, t0);
        // 65 requests asked at once: the last may go after (65-5)/10 s.
        let last = (0..65).map(|_| b.reserve(t0)).last().unwrap();
        assert!((last.as_secs_f64() - 6.0).abs() < 1e-9, "{last:?}");
    }
}
