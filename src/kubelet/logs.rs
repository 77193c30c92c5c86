//! `GET /containerLogs/{namespace}/{pod}/{container}`: the journal lines of
//! one container instance, with the kubelet's query parameters and answers
//! (400 for invalid ones, 404 for an unknown pod or container), streamed
//! with a flush per line.

use super::server::{text, Body, State};
use crate::journal::{self, LogError, LogOptions};
use http_body_util::BodyExt;
use hyper::body::{Bytes, Frame};
use hyper::{Response, StatusCode};

/// The parameters of a logs request, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    /// `follow`.
    pub follow: bool,
    /// `previous`.
    pub previous: bool,
    /// `timestamps`.
    pub timestamps: bool,
    /// `tailLines`.
    pub tail: Option<u64>,
    /// `limitBytes`.
    pub limit_bytes: Option<u64>,
    /// `sinceSeconds` or `sinceTime`, as µs since the epoch.
    pub since_us: Option<u64>,
}

fn parse_bool(name: &str, v: &str) -> Result<bool, String> {
    // Go's strconv.ParseBool, as the API's parameter codec uses.
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" | "" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("{name}: Invalid value: {v:?}: must be a boolean")),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            // Two hex digits exactly: `from_str_radix` would also take a
            // sign ("%+1").
            b'%' if b
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
            {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("ASCII hex digits");
                out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query's `name=value` pairs, decoded.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Parses and validates the query as the kubelet (and the API server's
/// `PodLogOptions` validation) do; `now_us` resolves `sinceSeconds`.
pub fn parse(query: &str, now_us: u64) -> Result<Params, String> {
    let mut p = Params::default();
    let mut since_seconds = None;
    let mut since_time = None;
    for (k, v) in query_pairs(query) {
        let int = |min: i64| -> Result<i64, String> {
            let n: i64 = v
                .parse()
                .map_err(|_| format!("{k}: Invalid value: {v:?}: must be an integer"))?;
            if n < min {
                let rule = if min == 0 {
                    "must be greater than or equal to 0"
                } else {
                    "must be greater than 0"
                };
                return Err(format!("{k}: Invalid value: {n}: {rule}"));
            }
            Ok(n)
        };
        match k.as_str() {
            "follow" => p.follow = parse_bool(&k, &v)?,
            "previous" => p.previous = parse_bool(&k, &v)?,
            "timestamps" => p.timestamps = parse_bool(&k, &v)?,
            "tailLines" => p.tail = Some(int(0)? as u64),
            "limitBytes" => p.limit_bytes = Some(int(1)? as u64),
            "sinceSeconds" => since_seconds = Some(int(1)? as u64),
            "sinceTime" => {
                let t: jiff::Timestamp = v
                    .parse()
                    .map_err(|_| format!("sinceTime: Invalid value: {v:?}: must be RFC 3339"))?;
                since_time = Some(t.as_microsecond().max(0) as u64);
            }
            // Known parameters the kubelet ignores here, and anything else.
            _ => {}
        }
    }
    p.since_us = match (since_seconds, since_time) {
        (Some(_), Some(_)) => {
            return Err("at most one of `sinceTime` or `sinceSeconds` may be specified".into())
        }
        (Some(s), None) => Some(now_us.saturating_sub(s.saturating_mul(1_000_000))),
        (None, t) => t,
    };
    Ok(p)
}

/// Passes at most `left` bytes on (`limitBytes`), then fails the write,
/// which ends the journal reader.
struct Limited<W> {
    inner: W,
    left: Option<u64>,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Limited<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let take = match self.left {
            Some(0) => {
                return std::task::Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "limitBytes reached",
                )))
            }
            Some(n) => (n as usize).min(buf.len()),
            None => buf.len(),
        };
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, &buf[..take]);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            if let Some(left) = self.left.as_mut() {
                *left -= *n as u64;
            }
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A body that streams what is written to the returned writer, chunk by
/// chunk as it arrives (a line is flushed to the client as it is read).
pub fn streamed_body() -> (tokio::io::DuplexStream, Body) {
    let (w, mut r) = tokio::io::duplex(64 * 1024);
    let stream = futures_util::stream::poll_fn(move |cx| {
        let mut buf = [0u8; 16 * 1024];
        let mut rb = tokio::io::ReadBuf::new(&mut buf);
        match tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut r), cx, &mut rb) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Some(Err(e))),
            std::task::Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                std::task::Poll::Ready(None)
            }
            std::task::Poll::Ready(Ok(())) => {
                std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(rb.filled())))))
            }
        }
    });
    (w, http_body_util::StreamBody::new(stream).boxed())
}

/// Answers a logs request.
pub async fn handle(
    state: &State,
    ns: &str,
    pod: &str,
    container: &str,
    query: &str,
) -> Response<Body> {
    let params = match parse(query, crate::clock::now_us()) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let Some(view) = super::server::find_view(state, ns, pod) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" does not exist"),
        );
    };
    let opts = LogOptions {
        container: Some(container.to_string()),
        follow: params.follow,
        tail: params.tail,
        since_us: params.since_us,
        timestamps: params.timestamps,
        previous: params.previous,
    };
    let q = match journal::container_query(&view, &opts) {
        Ok(q) => q,
        Err(LogError::NotFound(m)) => return text(StatusCode::NOT_FOUND, m),
        Err(LogError::Unavailable(m)) => return text(StatusCode::BAD_REQUEST, m),
    };
    let (w, body) = streamed_body();
    let sd = state.runtime.systemd().clone();
    let limit = params.limit_bytes;
    tokio::spawn(async move {
        let mut out = Limited {
            inner: w,
            left: limit,
        };
        // Ends with the instance when following, or when the client goes
        // away (the body's reader is dropped and writes fail).
        let stop = journal::until_instance_ends(&*sd, &q);
        if let Err(e) = journal::stream(&q, &mut out, stop).await {
            tracing::debug!(error = %e, "log stream ended");
        }
    });
    Response::builder()
        .header("content-type", "text/plain")
        .body(body)
        .expect("static response parts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_as_the_kubelet_validates_them() {
        let now = 1_000_000_000_000_000;
        let p = parse(
            "follow=true&tailLines=10&timestamps=1&limitBytes=5&sinceSeconds=60&previous=false",
            now,
        )
        .unwrap();
        assert_eq!(
            p,
            Params {
                follow: true,
                previous: false,
                timestamps: true,
                tail: Some(10),
                limit_bytes: Some(5),
                since_us: Some(now - 60_000_000),
            }
        );
        let t = parse("sinceTime=2026-11-26T10%3A00%3A00Z", now).unwrap();
        assert_eq!(
            t.since_us,
            Some(
                "2026-11-26T10:00:00Z"
                    .parse::<jiff::Timestamp>()
                    .unwrap()
                    .as_microsecond() as u64
            )
        );
        for bad in [
            "tailLines=-1",
            "limitBytes=0",
            "sinceSeconds=0",
            "sinceSeconds=5&sinceTime=2026-11-26T10:00:00Z",
            "sinceTime=yesterday",
            "follow=maybe",
            "tailLines=x",
        ] {
            assert!(parse(bad, now).is_err(), "{bad}");
        }
        assert_eq!(
            parse("tailLines=-1", now).unwrap_err(),
            "tailLines: Invalid value: -1: must be greater than or equal to 0"
        );
        assert_eq!(parse("", now).unwrap(), Params::default());
        // Further back than the epoch: from the beginning, not an overflow.
        assert_eq!(
            parse("sinceSeconds=99999999999999999", now)
                .unwrap()
                .since_us,
            Some(0)
        );
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            query_pairs("a=b%20c&d=e+f&g&h=%zz"),
            vec![
                ("a".to_string(), "b c".to_string()),
                ("d".into(), "e f".into()),
                ("g".into(), "".into()),
                ("h".into(), "%zz".into())
            ]
        );
        // Exactly two hex digits: no sign, no short escape at the end.
        assert_eq!(
            query_pairs("a=%+1&b=%-f&c=%4"),
            vec![
                ("a".to_string(), "% 1".to_string()),
                ("b".into(), "%-f".into()),
                ("c".into(), "%4".into())
            ]
        );
    }
}
