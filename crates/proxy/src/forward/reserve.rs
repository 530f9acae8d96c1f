//! Reserve: a slot on an endpoint of the serving pool, waiting in its queue when every
//! endpoint is full. Where the pool cannot serve, the request moves: to the same pool
//! in a newer table (the pool was replaced, or is shared unchanged by a newer table
//! whose fallbacks and consumers may differ), or to the pool's fallback (when the pool
//! has no live endpoint, or, as its `fallback.when` says, its queue is full or timed
//! out), which must
//! admit the caller and whose own rate limits apply (the pool left behind gives back
//! what its limits charged: a request counts against the pool that serves it).

use std::sync::Arc;

use http::HeaderMap;

use super::Forwarder;
use super::context::{RequestCtx, Serving};
use crate::auth::client_cert::Transport;
use crate::body::{RequestBody, is_json};
use crate::error::ProxyError;
use crate::limits::MAX_BUFFERED_BODY;
use crate::pool::{Slot, Unavailable};
use crate::store::Runtime;
use sluice_api::table::FallbackWhen;

impl Forwarder {
    /// Reserves a slot for the request, moving it between pools as the module docs
    /// say. Returns the slot and the body (read in full if a fallback's token budget
    /// needed it, or the pool rewrites the `model` of JSON bodies). A request no pool
    /// can take is refused, and what the limits charged it goes back.
    pub(super) async fn reserve(
        &self,
        ctx: &mut RequestCtx,
        serving: &mut Serving,
        headers: &HeaderMap,
        body: RequestBody,
    ) -> Result<(Slot, RequestBody), ProxyError> {
        let reserved = self.find_slot(ctx, serving, headers, body).await;
        if reserved.is_err() {
            ctx.rate.give_back();
        }
        reserved
    }

    async fn find_slot(
        &self,
        ctx: &mut RequestCtx,
        serving: &mut Serving,
        headers: &HeaderMap,
        mut body: RequestBody,
    ) -> Result<(Slot, RequestBody), ProxyError> {
        loop {
            let pool = serving.pool().clone();
            let pick = ctx.pick(&pool, headers);
            let no_endpoints = || ProxyError::NoEndpoints {
                pool: pool.key().to_owned(),
                capability: ctx.capability.clone(),
            };
            let asked = tokio::time::Instant::now();
            let acquired = pool.acquire(&pick, serving.deadline()).await;
            ctx.queue_wait += asked.elapsed();
            match acquired {
                Ok(slot) => {
                    // A backend that knows the model by another name gets the body
                    // rewritten: a JSON body is read in full (bounded) to do it.
                    if pool.spec.rewrites_model()
                        && is_json(headers)
                        && let RequestBody::Streaming(_) = body
                    {
                        body = RequestBody::Buffered(body.into_bytes(MAX_BUFFERED_BODY).await?);
                    }
                    return Ok((slot, body));
                }
                Err(Unavailable::Queue(e)) => {
                    // A saturated pool sends on to its fallback when told to.
                    let reason = match &e {
                        ProxyError::QueueFull { .. } => FallbackWhen::QueueFull,
                        ProxyError::QueueTimeout { .. } => FallbackWhen::QueueTimeout,
                        _ => return Err(e),
                    };
                    if !pool.spec.falls_back_when(reason) {
                        return Err(e);
                    }
                    let Some(fallback) = self
                        .fallback(serving, ctx.fallbacks, headers, &ctx.transport)
                        .await
                    else {
                        return Err(e);
                    };
                    body = self
                        .fall_back(ctx, serving, headers, fallback, body)
                        .await?;
                }
                Err(Unavailable::Replaced) => {
                    // A new table came while the request waited: wait on in its pool
                    // of the same key.
                    let (runtime, index) =
                        self.newest(pool.key(), None).ok_or_else(no_endpoints)?;
                    serving.move_to(runtime, index, ctx.start);
                }
                Err(Unavailable::NoCapacity) => {
                    // A pool unchanged by a newer table is shared with it and not
                    // marked replaced: follow the newer table, whose fallback and
                    // consumers may differ.
                    if let Some((runtime, index)) = self.newest(pool.key(), Some(serving)) {
                        serving.move_to(runtime, index, ctx.start);
                        continue;
                    }
                    if !pool.spec.falls_back_when(FallbackWhen::Unavailable) {
                        return Err(no_endpoints());
                    }
                    let fallback = self
                        .fallback(serving, ctx.fallbacks, headers, &ctx.transport)
                        .await
                        .ok_or_else(no_endpoints)?;
                    body = self
                        .fall_back(ctx, serving, headers, fallback, body)
                        .await?;
                }
            }
        }
    }

    /// Moves the request to pool `fallback` of the serving table. The pool left behind
    /// does not serve it: what its limits charged goes back. The fallback's own limits
    /// apply instead, so fallback traffic cannot overrun the pool it lands on, and a
    /// refusal there charges nothing anywhere.
    pub(super) async fn fall_back(
        &self,
        ctx: &mut RequestCtx,
        serving: &mut Serving,
        headers: &HeaderMap,
        fallback: usize,
        body: RequestBody,
    ) -> Result<RequestBody, ProxyError> {
        let from = serving.pool().clone();
        if ctx.fallback_from.is_none() {
            ctx.fallback_from = Some(from.key().to_owned());
        }
        serving.move_to(serving.runtime().clone(), fallback, ctx.start);
        ctx.rate.give_back();
        // Boxed: every request's future has room for what it awaits, and a fallback's
        // limits (with their Redis round trip) are rarely needed.
        let body = Box::pin(self.limit(ctx, serving, headers, body)).await?;
        self.metrics
            .fallbacks
            .with_label_values(&[from.key(), serving.pool().key()])
            .inc();
        ctx.fallbacks += 1;
        Ok(body)
    }

    /// The table in force and the index of its pool `key`, unless that table is the
    /// one `current` already serves from.
    fn newest(&self, key: &str, current: Option<&Serving>) -> Option<(Arc<Runtime>, usize)> {
        let next = self.store.load()?;
        if current.is_some_and(|s| Arc::ptr_eq(s.runtime(), &next)) {
            return None;
        }
        let index = next.pool_index(key)?;
        Some((next, index))
    }

    /// The index of the serving pool's fallback, when it has one that admits the
    /// caller (a fallback serves only the callers it would admit itself). After
    /// `hops` fallbacks, a chain as long as the table has pools ends here.
    pub(super) async fn fallback(
        &self,
        serving: &Serving,
        hops: usize,
        headers: &HeaderMap,
        transport: &Transport,
    ) -> Option<usize> {
        let runtime = serving.runtime();
        let f = runtime.fallback(serving.index())?;
        if hops >= runtime.pools.len() {
            return None;
        }
        let pool = &runtime.pools[f];
        runtime
            .auth
            .admit(pool, headers, transport)
            .await
            .is_ok()
            .then_some(f)
    }
}
