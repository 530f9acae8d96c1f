//! One subscription: subscribe, then apply each table line of the stream, save it to
//! the cache and have it acknowledged, until the stream ends.

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use sluice_api::RouteTable;
use sluice_api::load::LoadReport;
use sluice_api::push::{self, ACK_PATH, Ack, LineDecoder, REPORT_PATH};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::ack::acker;
use super::report::reporter;
use super::{HttpClient, SubscribeError, SubscriberConfig};
use crate::store::{Applied, TableStore};
use crate::table_cache::CacheWriter;

/// Subscribes once and applies what the stream brings until it ends; why it ended.
/// `applied_any` is set once a table was put in force (or found in force): the
/// stream was healthy.
pub(super) async fn subscribe_once(
    client: &HttpClient,
    config: &SubscriberConfig,
    store: &TableStore,
    writer: Option<&CacheWriter>,
    applied_any: &mut bool,
) -> SubscribeError {
    let uri = match join(&config.controller, &push::watch_path(&config.proxy_id)) {
        Ok(u) => u,
        Err(e) => return e,
    };
    let ack_uri = match join(&config.controller, ACK_PATH) {
        Ok(u) => u,
        Err(e) => return e,
    };
    let report_uri = match join(&config.controller, REPORT_PATH) {
        Ok(u) => u,
        Err(e) => return e,
    };
    let authorization = match super::bearer(config.token.as_ref()).await {
        Ok(a) => a,
        Err(e) => return e,
    };
    let mut req = Request::get(uri);
    if let Some(value) = &authorization {
        req = req.header(http::header::AUTHORIZATION, value);
    }
    let req = match req.body(Full::new(Bytes::new())) {
        Ok(r) => r,
        Err(e) => return SubscribeError::Url(e.to_string()),
    };
    let resp = match tokio::time::timeout(config.connect_timeout, client.request(req)).await {
        Err(_) => {
            return SubscribeError::Request(format!(
                "no answer within {:?}",
                config.connect_timeout
            ));
        }
        Ok(Err(e)) => return SubscribeError::Request(e.to_string()),
        Ok(Ok(resp)) => resp,
    };
    if resp.status() != StatusCode::OK {
        return SubscribeError::Status(resp.status());
    }
    tracing::info!(controller = %config.controller, proxy = %config.proxy_id, "subscribed to the controller");
    let acker = acker(
        client.clone(),
        ack_uri,
        config.token.clone(),
        config.ack_timeout,
    );
    let (reporter, mut ticker) = match config.report_interval {
        Some(every) => {
            let reporter = reporter(
                client.clone(),
                report_uri,
                config.token.clone(),
                config.ack_timeout,
            );
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            (Some(reporter), Some(ticker))
        }
        None => (None, None),
    };
    let mut body = resp.into_body();
    let mut lines = LineDecoder::default();
    let mut idle_deadline = Instant::now() + config.idle_timeout;
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = tokio::time::sleep_until(idle_deadline) => {
                return SubscribeError::Idle(config.idle_timeout);
            }
            () = tick(ticker.as_mut()) => {
                if let Some(r) = &reporter {
                    r.send(LoadReport {
                        proxy: config.proxy_id.clone(),
                        pools: store.load_report(),
                    });
                }
                continue;
            }
        };
        idle_deadline = Instant::now() + config.idle_timeout;
        let frame = match frame {
            None => return SubscribeError::Closed,
            Some(Err(e)) => return SubscribeError::Stream(e.to_string()),
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        lines.feed(&data);
        loop {
            let line = match lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => return SubscribeError::Stream(e.to_string()),
            };
            if let Some((applied, version, revision)) = apply_line(&line, store) {
                *applied_any = true;
                if applied == Applied::Swapped
                    && let Some(writer) = writer
                {
                    writer.save(line);
                }
                acker.send(Ack {
                    proxy: config.proxy_id.clone(),
                    version,
                    revision,
                });
            }
        }
    }
}

/// The next tick of `ticker`, or never.
async fn tick(ticker: Option<&mut Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn join(base: &Uri, path_and_query: &str) -> Result<Uri, SubscribeError> {
    let base = base.to_string();
    format!("{}{path_and_query}", base.trim_end_matches('/'))
        .parse()
        .map_err(|e: http::uri::InvalidUri| SubscribeError::Url(e.to_string()))
}

/// Parses and applies one table line; returns what was done, with the table's version
/// and revision, when it is in force.
fn apply_line(line: &[u8], store: &TableStore) -> Option<(Applied, u64, String)> {
    let table: RouteTable = match serde_json::from_slice(line) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "controller sent a line that is not a route table; ignored");
            return None;
        }
    };
    let (version, revision) = (table.version, table.revision.clone());
    match store.apply(table) {
        Ok(applied) => {
            if applied == Applied::Swapped {
                tracing::info!(version, %revision, "route table applied");
            }
            Some((applied, version, revision))
        }
        Err(e) => {
            tracing::error!(version, error = %e, "controller sent an invalid route table; keeping the last one");
            None
        }
    }
}
