//! The workers (`[runtime] workers` of them): each takes requests and stream frames from the
//! queue in turn, generates, and publishes the PNG or the error; on shutdown the first one to stop
//! answers the requests still queued. Requests run on any worker at once; stream frames on one
//! worker at a time, so that stream images go out in the order of their frames.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use image::{ImageFormat, RgbImage};

use super::TICK;
use super::answers::Answer;
use super::state::{Ctx, Job, lock};
use crate::config::SeedPolicy;
use crate::contract::Maps;
use crate::diffusion::GenerationParams;
use crate::error_code::ErrorCode;
use crate::frames::decode_frame;

/// What the worker takes next: a request, or the stream frames that arrived meanwhile.
enum Work {
    Request(Job),
    Frames(BTreeMap<String, Vec<u8>>),
}

/// A worker thread: requests and stream frames in turn, until stopping.
pub(super) fn work(ctx: Ctx) {
    let mut prefer_frames = false;
    while let Some(next) = next_work(&ctx, prefer_frames) {
        prefer_frames = matches!(next, Work::Request(_));
        ctx.publish_status();
        let frames = matches!(next, Work::Frames(_));
        match next {
            Work::Request(job) => run_request(&ctx, job),
            Work::Frames(frames) => run_frames(&ctx, frames),
        }
        {
            let mut p = lock(&ctx.shared.pending);
            p.busy -= 1;
            p.frames_running &= !frames;
        }
        // Another worker may wait for the frames this one was generating from.
        ctx.shared.wake.notify_all();
        ctx.publish_status();
    }
    answer_left(&ctx);
    log::debug!("worker stopped");
}

/// The next work for a worker, marked as running (`busy`, `running`, `frames_running`); `None`
/// once stopping. A request first unless `prefer_frames` and frames wait; frames only while no
/// other worker generates from frames.
fn next_work(ctx: &Ctx, prefer_frames: bool) -> Option<Work> {
    let mut p = lock(&ctx.shared.pending);
    loop {
        if ctx.stopping() {
            return None;
        }
        let frames_ready = !p.frames.is_empty() && !p.frames_running;
        if (!frames_ready || !prefer_frames)
            && let Some(mut job) = p.requests.pop_front()
        {
            let running = (job.request.id.clone(), job.ack.take());
            p.running.push(running);
            p.busy += 1;
            return Some(Work::Request(job));
        }
        if frames_ready {
            p.frames_running = true;
            p.busy += 1;
            return Some(Work::Frames(std::mem::take(&mut p.frames)));
        }
        p = ctx.shared.wake.wait_timeout(p, TICK).map_or_else(|e| e.into_inner().0, |(g, _)| g);
    }
}

/// Every accepted request gets an answer, also on shutdown: the requests still queued get
/// `shutting_down` (from whichever worker stops first; the queue is empty for the others).
fn answer_left(ctx: &Ctx) {
    let left: Vec<Job> = lock(&ctx.shared.pending).requests.drain(..).collect();
    for job in left {
        ctx.error(Some(&job.request.id), ErrorCode::ShuttingDown, "the device is shutting down", job.reply.as_ref());
        ack_job(ctx, &job);
    }
}

fn next_seed(ctx: &Ctx) -> u64 {
    let g = &ctx.config.generation;
    match g.seed_policy {
        SeedPolicy::Fixed => g.fixed_seed,
        SeedPolicy::Random => rand::random(),
        SeedPolicy::Counter => ctx.shared.seed_counter.fetch_add(1, Ordering::Relaxed),
    }
}

fn run_request(ctx: &Ctx, job: Job) {
    answer_request(ctx, &job);
    let ticket = {
        let mut p = lock(&ctx.shared.pending);
        let at = p.running.iter().position(|r| r.0 == job.request.id);
        at.and_then(|at| p.running.swap_remove(at).1)
    };
    if let Some(ticket) = ticket {
        ctx.out.ack(ticket);
    }
}

/// Acknowledge a request to the broker once it has been answered (see [`crate::mqtt::Ack`]).
fn ack_job(ctx: &Ctx, job: &Job) {
    if let Some(ticket) = job.ack {
        ctx.out.ack(ticket);
    }
}

/// Generate and publish the image, or the error, and keep it for retries of the same id.
fn answer_request(ctx: &Ctx, job: &Job) {
    let id = &job.request.id;
    let params = GenerationParams {
        seed: job.request.seed.unwrap_or_else(|| next_seed(ctx)),
        steps: job.request.steps,
        strength: job.request.strength,
        eta: ctx.config.generation.eta,
        text: job.request.text.clone(),
    };
    log::info!("request {id:?}: generating ({} steps, strength {}, seed {})", params.steps, params.strength, params.seed);
    let start = Instant::now();
    let answer = match generate_png(ctx, &job.request.maps, &params) {
        Ok(png) => {
            finish_image(ctx, start);
            let answer = Answer::Image(Arc::new(png));
            ctx.publish_answer(Some(id), &answer, job.reply.as_ref());
            answer
        }
        Err((code, message)) => ctx.error_answer(Some(id), code, &message, job.reply.as_ref()),
    };
    // Before `running` is cleared, so that a retry finds the id pending or answered.
    lock(&ctx.shared.answers).insert(id, answer);
}

fn run_frames(ctx: &Ctx, frames: BTreeMap<String, Vec<u8>>) {
    let info = ctx.generator.info();
    let limits = ctx.frame_limits();
    let mut fresh = false;
    let mut latest = lock(&ctx.shared.latest);
    for (name, bytes) in frames {
        let Some(modality) = info.modality(&name) else { continue };
        match decode_frame(&bytes, modality, info.image.size, &limits) {
            Ok(map) => {
                latest.insert(name, map);
                fresh = true;
            }
            Err(e) => ctx.error(None, e.code(), &format!("frame/{name}: {e}"), None),
        }
    }
    if !fresh {
        return;
    }
    let maps = latest.clone();
    drop(latest);
    let params = GenerationParams {
        seed: next_seed(ctx),
        steps: ctx.config.generation.steps_for(info).min(info.schedule.num_train_timesteps),
        strength: ctx.config.generation.strength_for(info),
        eta: ctx.config.generation.eta,
        text: ctx.config.generation.text_for(info),
    };
    let start = Instant::now();
    match generate_png(ctx, &maps, &params) {
        Ok(png) => {
            finish_image(ctx, start);
            ctx.publish_answer(None, &Answer::Image(Arc::new(png)), None);
        }
        Err((code, message)) => ctx.error(None, code, &message, None),
    }
}

fn finish_image(ctx: &Ctx, start: Instant) {
    let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut stats = lock(&ctx.shared.stats);
    stats.summary.images_generated += 1;
    stats.last_latency_ms = Some(ms);
    log::info!("image generated in {ms} ms");
}

/// Generate and encode; on failure an error code and message.
fn generate_png(ctx: &Ctx, maps: &Maps, params: &GenerationParams) -> Result<Vec<u8>, (ErrorCode, String)> {
    let image = ctx.generator.generate(maps, params).map_err(|e| (e.code(), format!("generation failed: {e}")))?;
    ctx.record_images(maps, &image);
    encode_png(&image).map_err(|e| (ErrorCode::EncodeFailed, format!("cannot encode the PNG: {e}")))
}

/// Encode an RGB image as PNG bytes.
fn encode_png(image: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut buf = Cursor::new(Vec::new());
    image.write_to(&mut buf, ImageFormat::Png)?;
    Ok(buf.into_inner())
}

