//! A notification receiver: a real HTTP server on loopback that records each
//! request it gets and answers with the statuses a test scripts (then 200).

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub content_type: String,
    pub body: String,
}

pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// A receiver that answers each request with the next of `statuses`,
    /// and 200 once they are used up; `always` answers every request so.
    pub async fn start(statuses: &[u16]) -> Receiver {
        Self::serve(statuses.to_vec(), None).await
    }

    pub async fn always(status: u16) -> Receiver {
        Self::serve(vec![], Some(status)).await
    }

    async fn serve(statuses: Vec<u16>, always: Option<u16>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(statuses.into_iter()));
        let seen = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, script) = (seen.clone(), script.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (seen, script) = (seen.clone(), script.clone());
                    async move {
                        let path = req.uri().path().to_string();
                        let content_type = req
                            .headers()
                            .get(http::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        seen.lock().unwrap().push(Received {
                            path,
                            content_type,
                            body: String::from_utf8_lossy(&body).into_owned(),
                        });
                        let status = always
                            .or_else(|| script.lock().unwrap().next())
                            .unwrap_or(200);
                        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { url, got, task }
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived, at most a minute.
    pub async fn at_least(&self, n: usize, what: &str) {
        super::process::wait_for(what, Duration::from_secs(60), || async {
            (self.received().len() >= n).then_some(())
        })
        .await;
    }

    /// Waits until `n` requests arrived, then a while longer to see that no
    /// more come; returns them.
    pub async fn exactly(&self, n: usize, what: &str) -> Vec<Received> {
        self.at_least(n, what).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let got = self.received();
        assert_eq!(got.len(), n, "{what}: {got:#?}");
        got
    }
}
