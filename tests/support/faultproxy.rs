//! A reverse proxy in front of the real MinIO that refuses chosen requests.
//! It stands in only for what a healthy MinIO never does: a store that
//! rejects the SDK's default request checksums, or one that answers 5xx in
//! the middle of a multipart upload, or one whose writes stall (a slow link,
//! so that tests can act while an upload is in flight), or a connection that
//! drops in the middle of a response body. Every other request
//! reaches MinIO as sent (the Host header is kept, so signatures still verify).

use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Decides per request: `Some((status, S3 error code))` refuses it.
pub type Rule =
    Arc<dyn Fn(&http::request::Parts) -> Option<(StatusCode, &'static str)> + Send + Sync>;

pub struct FaultProxy {
    pub endpoint: String,
    rejected: Arc<AtomicUsize>,
    gate: Arc<Gate>,
    task: tokio::task::JoinHandle<()>,
}

/// While closed, PUT requests wait at the proxy (counted in `held`), and
/// ranged GETs from `from_byte` on.
#[derive(Default)]
struct Gate {
    closed: std::sync::atomic::AtomicBool,
    /// Ranged GETs starting here or later are held too (0: none are).
    from_byte: std::sync::atomic::AtomicU64,
    held: AtomicUsize,
    opened: tokio::sync::Notify,
}

impl FaultProxy {
    /// A proxy on the upstream's own address (loopback, or the node's, which pods reach).
    pub async fn start(upstream: &str, rule: Rule) -> FaultProxy {
        let upstream: Uri = upstream.parse().unwrap();
        let host = upstream.host().unwrap().to_string();
        let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let rejected = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Gate::default());
        let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build_http();
        let counter = rejected.clone();
        let gate_in = gate.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (client, upstream, rule, counter, gate) = (
                    client.clone(),
                    upstream.clone(),
                    rule.clone(),
                    counter.clone(),
                    gate_in.clone(),
                );
                let service = service_fn(move |req| {
                    forward(
                        req,
                        client.clone(),
                        upstream.clone(),
                        rule.clone(),
                        counter.clone(),
                        gate.clone(),
                    )
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        FaultProxy {
            endpoint,
            rejected,
            gate,
            task,
        }
    }

    /// From now on PUT requests wait at the proxy until `release`.
    pub fn hold_puts(&self) {
        self.gate.closed.store(true, Ordering::SeqCst);
    }

    /// From now on ranged GETs that start at `from_byte` or later wait at
    /// the proxy until `release` (a download stalls halfway), as PUTs do.
    pub fn hold_ranges_from(&self, from_byte: u64) {
        self.gate.from_byte.store(from_byte, Ordering::SeqCst);
        self.gate.closed.store(true, Ordering::SeqCst);
    }

    /// Lets the held PUTs (and all later ones) through.
    pub fn release(&self) {
        self.gate.closed.store(false, Ordering::SeqCst);
        self.gate.opened.notify_waiters();
    }

    /// How many PUTs have waited at the closed gate so far.
    pub fn held(&self) -> usize {
        self.gate.held.load(Ordering::SeqCst)
    }

    /// How many requests the rule refused so far.
    pub fn rejected(&self) -> usize {
        self.rejected.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The code a rule returns to have the request answered, but the
/// connection dropped halfway through the response body.
pub const CUT_BODY: &str = "CutBody";

/// The code a rule returns to have a ranged GET answered as a store that
/// ignores Range answers: `200` with no Content-Range (the Range header is
/// signed, so the proxy cannot drop it from the request).
pub const IGNORE_RANGE: &str = "IgnoreRange";

/// The code a rule returns to have the request answered as MinIO answers
/// it, but with a wrong CRC64/NVME (a 4-byte value, as moto's server
/// reports) wherever the answer carries one: a store that keeps a wrong
/// checksum for the right bytes.
pub const WRONG_CHECKSUM: &str = "WrongChecksum";

/// The code a rule returns to have a GET answered with one byte of its body
/// flipped, halfway: bytes that really differ from what was stored.
pub const FLIP_BYTE: &str = "FlipByte";

/// What moto's server reports as an object's CRC64/NVME.
pub const MOTO_CRC: &str = "fXiUhg==";

/// Whether the closed gate holds this request: a PUT, or a ranged GET from
/// the gate's byte on.
fn held(parts: &http::request::Parts, gate: &Gate) -> bool {
    if !gate.closed.load(Ordering::SeqCst) {
        return false;
    }
    let from = gate.from_byte.load(Ordering::SeqCst);
    let range_start = parts
        .headers
        .get("range")
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|start| start.parse::<u64>().ok());
    match parts.method {
        http::Method::PUT => true,
        http::Method::GET => from > 0 && range_start.is_some_and(|start| start >= from),
        _ => false,
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn forward(
    req: Request<Incoming>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Incoming>,
    upstream: Uri,
    rule: Rule,
    rejected: Arc<AtomicUsize>,
    gate: Arc<Gate>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = req.into_parts();
    if held(&parts, &gate) {
        gate.held.fetch_add(1, Ordering::SeqCst);
        while gate.closed.load(Ordering::SeqCst) {
            let opened = gate.opened.notified();
            if !gate.closed.load(Ordering::SeqCst) {
                break;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(100), opened).await;
        }
    }
    let verdict = rule(&parts);
    let code = verdict.map(|(_, c)| c);
    let cut = code == Some(CUT_BODY);
    let whole = code == Some(IGNORE_RANGE);
    let wrong_crc = code == Some(WRONG_CHECKSUM);
    let flip = code == Some(FLIP_BYTE);
    let answered = cut || whole || wrong_crc || flip;
    if let Some((status, code)) = verdict.filter(|_| !answered) {
        rejected.fetch_add(1, Ordering::SeqCst);
        // Read the body, as a store would, before answering with S3's error shape.
        let _ = body.collect().await;
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>refused by the test store</Message></Error>"
        );
        return Ok(Response::builder()
            .status(status)
            .header("content-type", "application/xml")
            .body(full(xml))
            .unwrap());
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = format!("{upstream}{}", path.trim_start_matches('/'))
        .parse()
        .unwrap();
    match client.request(Request::from_parts(parts, body)).await {
        Ok(resp) if cut => {
            rejected.fetch_add(1, Ordering::SeqCst);
            let (head, body) = resp.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let half = bytes.slice(..bytes.len() / 2);
            let frames: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> =
                vec![Ok(Frame::data(half)), Err("cut by the test store".into())];
            let body = StreamBody::new(futures::stream::iter(frames)).boxed();
            Ok(Response::from_parts(head, body))
        }
        Ok(mut resp) if whole => {
            rejected.fetch_add(1, Ordering::SeqCst);
            *resp.status_mut() = StatusCode::OK;
            resp.headers_mut().remove("content-range");
            Ok(resp.map(|b| b.map_err(Into::into).boxed()))
        }
        Ok(mut resp) if wrong_crc => {
            if let Some(crc) = resp.headers_mut().get_mut("x-amz-checksum-crc64nvme") {
                rejected.fetch_add(1, Ordering::SeqCst);
                *crc = http::HeaderValue::from_static(MOTO_CRC);
            }
            Ok(resp.map(|b| b.map_err(Into::into).boxed()))
        }
        Ok(resp) if flip => {
            rejected.fetch_add(1, Ordering::SeqCst);
            let (head, body) = resp.into_parts();
            let mut bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .unwrap_or_default();
            let half = bytes.len() / 2;
            if let Some(b) = bytes.get_mut(half) {
                *b ^= 0x01;
            }
            Ok(Response::from_parts(head, full(bytes)))
        }
        Ok(resp) => Ok(resp.map(|b| b.map_err(Into::into).boxed())),
        Err(e) => Ok(Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(full(e.to_string()))
            .unwrap()),
    }
}

/// Refuses every request that carries one of the SDK's flexible checksums,
/// as several S3-compatible stores do.
pub fn reject_checksums() -> Rule {
    Arc::new(|parts| {
        let has_checksum = parts.headers.keys().any(|h| {
            let h = h.as_str();
            h.starts_with("x-amz-checksum-")
                || h == "x-amz-sdk-checksum-algorithm"
                || h == "x-amz-trailer"
        });
        has_checksum.then_some((StatusCode::BAD_REQUEST, "InvalidArgument"))
    })
}

/// Whether the request uploads a multipart part (`?partNumber=`).
fn is_part(parts: &http::request::Parts) -> bool {
    let query = parts.uri.query().unwrap_or_default();
    parts.method == http::Method::PUT && query.split('&').any(|kv| kv.starts_with("partNumber="))
}

/// Refuses a part that carries a CRC64/NVME header, as Cloudflare R2 does
/// (it takes CRC64/NVME for the whole object only).
pub fn refuse_part_checksums() -> Rule {
    Arc::new(|parts| {
        let crc = parts.headers.contains_key("x-amz-checksum-crc64nvme");
        (is_part(parts) && crc).then_some((StatusCode::NOT_IMPLEMENTED, "NotImplemented"))
    })
}

/// Refuses a body sent `aws-chunked` with a trailing checksum, as OVH and
/// Scality do.
pub fn refuse_trailers() -> Rule {
    Arc::new(|parts| {
        let chunked = parts
            .headers
            .get("content-encoding")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("aws-chunked"));
        let trailer = parts.headers.contains_key("x-amz-trailer");
        (chunked || trailer).then_some((StatusCode::BAD_REQUEST, "InvalidArgument"))
    })
}

/// A store that ignores `If-None-Match: *` (emulated): before a write
/// that carries it goes on, the object under its key is deleted (with
/// `client`, as the store's own), so the write replaces what was there.
/// The header is signed, so the proxy cannot drop it instead. `on_put`:
/// on PutObject too, else on CompleteMultipartUpload only (as moto did).
pub fn ignore_if_none_match(client: aws_sdk_s3::Client, on_put: bool) -> Rule {
    Arc::new(move |parts| {
        let query = parts.uri.query().unwrap_or_default();
        let completes = parts.method == http::Method::POST && query.contains("uploadId=");
        let puts = on_put && parts.method == http::Method::PUT && !is_part(parts);
        if parts.headers.contains_key("if-none-match") && (puts || completes) {
            let path = parts.uri.path().trim_start_matches('/');
            if let Some((bucket, key)) = path.split_once('/') {
                let delete = client.delete_object().bucket(bucket).key(key);
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(async {
                        delete
                            .send()
                            .await
                            .expect("the emulated overwrite's delete");
                    })
                });
            }
        }
        None
    })
}

/// Whether the request names an object (path style: `/<bucket>/<key>`),
/// not a bucket (listings, multipart uploads in progress).
fn names_object(parts: &http::request::Parts) -> bool {
    parts.uri.path().trim_start_matches('/').contains('/')
}

/// Reports a wrong CRC64/NVME for every object, whose bytes stay right.
pub fn wrong_stored_checksum() -> Rule {
    Arc::new(|parts| {
        (names_object(parts) && matches!(parts.method, http::Method::HEAD | http::Method::GET))
            .then_some((StatusCode::OK, WRONG_CHECKSUM))
    })
}

/// As `wrong_stored_checksum`, and every object whose path holds `flip`'s
/// text (while it holds one; "" is every object) read back with a byte
/// flipped: the store's checksum and those bytes both wrong.
pub fn wrong_checksum_and_bytes(flip: Arc<std::sync::Mutex<Option<String>>>) -> Rule {
    Arc::new(move |parts| match parts.method {
        http::Method::HEAD if names_object(parts) => Some((StatusCode::OK, WRONG_CHECKSUM)),
        http::Method::GET if names_object(parts) => {
            let flipped = flip.lock().unwrap().clone();
            flipped
                .is_some_and(|f| parts.uri.path().contains(&f))
                .then_some((StatusCode::OK, FLIP_BYTE))
        }
        _ => None,
    })
}

/// Answers 500 to every HEAD of an object: a store that cannot say what
/// it holds.
pub fn fail_heads() -> Rule {
    Arc::new(|parts| {
        (parts.method == http::Method::HEAD && names_object(parts))
            .then_some((StatusCode::INTERNAL_SERVER_ERROR, "InternalError"))
    })
}

/// Answers 500 to every upload of multipart part `n`.
pub fn fail_part(n: u32) -> Rule {
    Arc::new(move |parts| {
        let query = parts.uri.query().unwrap_or_default();
        let is_part = query.split('&').any(|kv| kv == format!("partNumber={n}"));
        (parts.method == http::Method::PUT && is_part)
            .then_some((StatusCode::INTERNAL_SERVER_ERROR, "InternalError"))
    })
}

/// Answers 500 to every object write (PUT), as a store in trouble would.
pub fn fail_puts() -> Rule {
    Arc::new(|parts| {
        (parts.method == http::Method::PUT)
            .then_some((StatusCode::INTERNAL_SERVER_ERROR, "InternalError"))
    })
}

/// Refuses DeleteObjects (POST ?delete), as stores without bulk delete do.
pub fn refuse_bulk_delete() -> Rule {
    Arc::new(|parts| {
        let bulk = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .any(|kv| kv == "delete" || kv == "delete=");
        (parts.method == http::Method::POST && bulk)
            .then_some((StatusCode::NOT_IMPLEMENTED, "NotImplemented"))
    })
}

/// Refuses nothing: a proxy only to stall writes (`hold_puts`).
pub fn refuse_nothing() -> Rule {
    Arc::new(|_| None)
}
