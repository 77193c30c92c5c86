//! Retrying what the API server asked to be retried later, as client-go
//! does: an answer of 429 or 5xx that carries `Retry-After: <seconds>` is
//! tried again after that many seconds, up to [`MAX_RETRIES`] times, inside
//! the call. Any other failure goes back to the caller, which backs off on
//! its own.
//!
//! kube's default retry layer is off (see [`super::client`]): it also
//! retries 503 and 504 without being asked, 15 times over up to minutes,
//! so a status written during an outage waited long after the server was
//! back. Without any in-call retry, a storm of 429s was answered by each
//! caller's own back-off, which grows to 10 s, and 20 refused requests kept
//! a new pod's status from the API server for up to two minutes although
//! the server asked for one second.

use std::time::Duration;

use hyper::{header, HeaderMap, Request, Response, StatusCode};
use kube::client::Body;

/// client-go's `maxRetries` for a request.
pub const MAX_RETRIES: u32 = 10;

/// The longest wait one answer can ask for: a server asking for more gets
/// the caller's own back-off instead, whose steps are no longer than this.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// How long to wait before trying again, if the answer asks for a retry:
/// 429 or any 5xx with a `Retry-After` of whole seconds (the form the API
/// server sends; an HTTP date is not retried, as in client-go).
pub fn retry_after(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
        return None;
    }
    let secs: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let wait = Duration::from_secs(secs);
    (wait <= MAX_WAIT).then_some(wait)
}

/// The tower policy: one per request (tower clones it for each call).
#[derive(Debug, Clone)]
pub struct RetryAfter {
    left: u32,
}

impl Default for RetryAfter {
    fn default() -> Self {
        RetryAfter { left: MAX_RETRIES }
    }
}

impl<B, E> tower::retry::Policy<Request<Body>, Response<B>, E> for RetryAfter {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut Request<Body>,
        result: &mut Result<Response<B>, E>,
    ) -> Option<Self::Future> {
        let answer = result.as_ref().ok()?;
        let wait = retry_after(answer.status(), answer.headers())?;
        self.left = self.left.checked_sub(1)?;
        Some(tokio::time::sleep(wait))
    }

    /// Only requests whose body is already in memory can be sent again;
    /// a streamed one gets the first answer.
    fn clone_request(&mut self, req: &Request<Body>) -> Option<Request<Body>> {
        let mut copy = Request::new(req.body().try_clone()?);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use tower::{Service, ServiceExt};

    fn headers(retry_after: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = retry_after {
            h.insert(header::RETRY_AFTER, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_answers_asking_for_a_retry_in_seconds_are_retried() {
        let s = |n| StatusCode::from_u16(n).unwrap();
        let one = Some(Duration::from_secs(1));
        assert_eq!(retry_after(s(429), &headers(Some("1"))), one);
        assert_eq!(retry_after(s(503), &headers(Some(" 1 "))), one);
        assert_eq!(
            retry_after(s(500), &headers(Some("0"))),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(s(429), &headers(Some("10"))), Some(MAX_WAIT));
        // Asked for too long, not asked, or asked in a form not understood.
        assert_eq!(retry_after(s(429), &headers(Some("11"))), None);
        assert_eq!(retry_after(s(429), &headers(None)), None);
        assert_eq!(retry_after(s(503), &headers(None)), None);
        assert_eq!(
            retry_after(s(429), &headers(Some("Wed, 21 Oct 2015 07:28:00 GMT"))),
            None
        );
        assert_eq!(retry_after(s(429), &headers(Some("-1"))), None);
        // Client errors other than 429 are the caller's to handle.
        assert_eq!(retry_after(s(409), &headers(Some("1"))), None);
        assert_eq!(retry_after(s(200), &headers(Some("1"))), None);
    }

    /// A service answering `code` with `Retry-After: 0` to its first
    /// `fail` calls, then 200; counts calls.
    fn flaky(
        fail: u32,
        code: u16,
        calls: Arc<AtomicU32>,
    ) -> impl Service<
        Request<Body>,
        Response = Response<()>,
        Error = std::convert::Infallible,
        Future = std::future::Ready<Result<Response<()>, std::convert::Infallible>>,
    > + Clone {
        tower::service_fn(move |req: Request<Body>| {
            assert_eq!(req.uri().path(), "/api/v1/pods");
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let mut r = Response::new(());
            if n < fail {
                *r.status_mut() = StatusCode::from_u16(code).unwrap();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, "0".parse().unwrap());
            }
            std::future::ready(Ok(r))
        })
    }

    async fn call(fail: u32, code: u16) -> (StatusCode, u32) {
        let calls = Arc::new(AtomicU32::new(0));
        let mut svc =
            tower::retry::Retry::new(RetryAfter::default(), flaky(fail, code, calls.clone()));
        let req = Request::post("/api/v1/pods")
            .body(Body::from(b"{}".to_vec()))
            .unwrap();
        let r = svc.ready().await.unwrap().call(req).await.unwrap();
        (r.status(), calls.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_request_is_tried_again_at_most_ten_times() {
        assert_eq!(call(0, 429).await, (StatusCode::OK, 1));
        assert_eq!(call(3, 429).await, (StatusCode::OK, 4));
        assert_eq!(call(10, 503).await, (StatusCode::OK, 11));
        assert_eq!(call(11, 429).await, (StatusCode::TOO_MANY_REQUESTS, 11));
        // Not asked to retry: the first answer stands.
        assert_eq!(call(1, 409).await, (StatusCode::CONFLICT, 1));
    }
}
