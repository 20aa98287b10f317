//! The dispatcher: parses incoming messages, queues requests and stream frames for the worker,
//! answers refusals, ignores duplicate deliveries and renews the subscriptions on every CONNACK.

use std::sync::mpsc::{Receiver, RecvTimeoutError};

use super::TICK;
use super::answers::Answer;
use super::request::{self, Refusal, RequestRules};
use super::state::{Ctx, Job, lock};
use crate::error_code::ErrorCode;
use crate::mqtt::{LoopEvent, ReplyTo, Ticket, topic_matches};

/// The dispatcher thread: handles the loop thread's events until the channel closes or, once
/// stopping, until the events that already arrived are answered.
pub(super) fn dispatch(ctx: Ctx, rx: Receiver<LoopEvent>) {
    let frame_prefix = format!("{}frame/", ctx.prefix);
    let request_filter = ctx.config.mqtt.request_filter.clone().unwrap_or_else(|| format!("{}request", ctx.prefix));
    let birth_topic = ctx.home_assistant_birth_topic();
    loop {
        let stopping = ctx.stopping();
        let event = if stopping {
            // Answer what already arrived, then leave.
            match rx.try_recv() {
                Ok(e) => e,
                Err(_) => break,
            }
        } else {
            match rx.recv_timeout(TICK) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => {
                    ctx.refresh_display(ctx.broker_state());
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        };
        match event {
            LoopEvent::Connected { .. } => {
                ctx.out.new_connection();
                if stopping {
                    continue;
                }
                for filter in [format!("{frame_prefix}+"), request_filter.clone()].into_iter().chain(birth_topic.clone()) {
                    match ctx.out.subscribe(&filter) {
                        Ok(()) => log::info!("subscribed to {filter}"),
                        Err(e) => log::error!("{e}"),
                    }
                }
                ctx.publish_status();
                ctx.publish_discovery();
            }
            LoopEvent::Oversized { bytes, max } => ctx.error(
                None,
                ErrorCode::MessageTooLarge,
                &format!("a {bytes}-byte message exceeded mqtt.max_packet_bytes = {max} and was dropped"),
                None,
            ),
            LoopEvent::Message { topic, payload, reply, ack, redelivered } => {
                let ticket = ctx.out.track(ack);
                if topic_matches(&request_filter, &topic) {
                    // Acknowledged once answered (by the worker when queued).
                    let incoming = Incoming { payload: &payload, reply, redelivered };
                    if let Some(ticket) = on_request(&ctx, incoming, ticket, stopping) {
                        ctx.out.ack(ticket);
                    }
                    continue;
                }
                if birth_topic.as_deref() == Some(topic.as_str()) {
                    // Home Assistant (re)started: it forgets entities whose discovery it missed.
                    if payload == b"online" && !stopping {
                        ctx.publish_discovery();
                    }
                    ctx.out.ack(ticket);
                    continue;
                }
                match topic.strip_prefix(&frame_prefix) {
                    Some(modality) if !stopping => on_frame(&ctx, modality, payload),
                    Some(_) => {}
                    // E.g. a subscription left in a persistent session by an older configuration.
                    None => log::debug!("ignoring a message on {topic:?}"),
                }
                // A frame is only the latest picture of a stream: acknowledged on arrival.
                ctx.out.ack(ticket);
            }
        }
    }
    log::debug!("dispatcher stopped");
}

fn on_frame(ctx: &Ctx, modality: &str, payload: Vec<u8>) {
    if ctx.generator.info().modality(modality).is_none() {
        let known = modality_names(ctx);
        ctx.error(None, ErrorCode::UnknownModality, &format!("frame/{modality}: the model has modalities {known}"), None);
        return;
    }
    let replaced = {
        let mut p = lock(&ctx.shared.pending);
        p.frames.insert(modality.to_string(), payload).is_some()
    };
    if replaced {
        lock(&ctx.shared.stats).summary.dropped_frames += 1;
        log::debug!("frame/{modality}: replaced a pending frame");
    }
    ctx.shared.wake.notify_all();
}

fn modality_names(ctx: &Ctx) -> String {
    let names: Vec<&str> = ctx.generator.info().modalities.iter().map(|m| m.name.as_str()).collect();
    format!("{names:?}")
}

/// A publish on the request topic.
struct Incoming<'a> {
    payload: &'a [u8],
    reply: Option<ReplyTo>,
    /// The broker's DUP flag (see [`LoopEvent::Message`]).
    redelivered: bool,
}

/// Queue, replay or refuse a request; returns its ack when it is done with here (refused,
/// replayed, duplicate), `None` when the queued job carries it.
fn on_request(ctx: &Ctx, incoming: Incoming<'_>, ack: Ticket, stopping: bool) -> Option<Ticket> {
    let Incoming { payload, reply, redelivered } = incoming;
    let mut job = match parse_request(ctx, payload, stopping) {
        Ok(Parsed::Job(job)) => job,
        Ok(Parsed::Pending(id)) => return adopt_ack(ctx, &id, ack),
        Ok(Parsed::Answered(id, _)) if redelivered => {
            // The broker sends it again because our acknowledgement was lost: the answer went out.
            log::info!("request {id:?}: redelivery of an answered request ignored");
            lock(&ctx.shared.stats).summary.duplicates_ignored += 1;
            return Some(ack);
        }
        Ok(Parsed::Answered(id, answer)) => {
            log::info!("request {id:?}: answered before, sending the same answer again");
            lock(&ctx.shared.stats).summary.replays += 1;
            ctx.publish_answer(Some(&id), &answer, reply.as_ref());
            ctx.publish_status();
            return Some(ack);
        }
        Err(r) => {
            ctx.error(r.id.as_deref(), r.code, &r.message, reply.as_ref());
            return Some(ack);
        }
    };
    job.reply = reply;
    job.ack = Some(ack);
    let id = job.request.id.clone();
    let refused = {
        let mut p = lock(&ctx.shared.pending);
        if p.requests.len() < ctx.config.limits.queue_depth {
            p.requests.push_back(job);
            None
        } else {
            Some(job)
        }
    };
    if let Some(job) = refused {
        let depth = ctx.config.limits.queue_depth;
        ctx.error(Some(&id), ErrorCode::QueueFull, &format!("{depth} requests are already waiting; try again later"), job.reply.as_ref());
        return job.ack;
    }
    lock(&ctx.shared.stats).summary.requests_accepted += 1;
    log::debug!("request {id:?} queued");
    ctx.shared.wake.notify_all();
    None
}

/// Parse and check a request, or recognise the id of one still pending or answered recently.
fn parse_request(ctx: &Ctx, payload: &[u8], stopping: bool) -> Result<Parsed, Refusal> {
    let body = request::parse_body(payload)?;
    if is_pending(ctx, &body.id) {
        log::info!("request {:?}: duplicate of a pending request ignored", body.id);
        lock(&ctx.shared.stats).summary.duplicates_ignored += 1;
        return Ok(Parsed::Pending(body.id));
    }
    if let Some(answer) = lock(&ctx.shared.answers).get(&body.id) {
        return Ok(Parsed::Answered(body.id, answer));
    }
    if stopping {
        return Err(Refusal::new(Some(&body.id), ErrorCode::ShuttingDown, "the device is shutting down"));
    }
    let (config, info) = (&ctx.config, ctx.generator.info());
    let default_text = config.generation.text_for(info);
    let rules = RequestRules {
        info,
        frames: ctx.frame_limits(),
        max_steps: config.limits.max_steps,
        max_strength: config.limits.max_strength,
        default_steps: config.generation.steps_for(info),
        default_strength: config.generation.strength_for(info),
        default_text: &default_text,
    };
    Ok(Parsed::Job(Job { request: body.check(&rules)?, reply: None, ack: None }))
}

/// A request that passed [`parse_request`].
enum Parsed {
    Job(Job),
    /// Another delivery of an id still queued or being generated.
    Pending(String),
    /// An id answered recently, and its answer.
    Answered(String, Answer),
}

/// Whether request `id` is queued or being generated.
fn is_pending(ctx: &Ctx, id: &str) -> bool {
    let p = lock(&ctx.shared.pending);
    p.requests.iter().any(|j| j.request.id == id) || p.running.iter().any(|r| r.0 == id)
}

/// A duplicate delivery of `id` (e.g. redelivered by the broker after a reconnect) arrived with
/// `ticket`. While `id` is still queued or being generated, its answer acknowledges the new
/// delivery instead, so that a crash before the answer still gets it delivered again; returns
/// the ticket to release now (the replaced one, void on a new connection, or else the new one).
fn adopt_ack(ctx: &Ctx, id: &str, ticket: Ticket) -> Option<Ticket> {
    match lock(&ctx.shared.pending).ack_slot(id) {
        Some(slot) => slot.replace(ticket),
        None => Some(ticket),
    }
}
