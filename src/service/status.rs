//! The retained `P/status` and the status display, drawn from the shared state.

use std::sync::atomic::Ordering;

use image::RgbImage;
use serde::Serialize;

use super::state::{Ctx, lock};
use crate::contract::{Maps, ModalityInfo};
use crate::diffusion::DEFAULT_GUIDANCE_SCALE;
use crate::display::{BrokerState, PanelState, render_map};

/// `P/status` payload.
#[derive(Serialize)]
struct Status<'a> {
    state: &'static str,
    device_id: &'a str,
    model: ModelSummary<'a>,
    modalities: &'a [ModalityInfo],
    generation: GenerationSummary,
    queue_depth: usize,
    queue_capacity: usize,
    /// Generations at once at most (`[runtime] workers`).
    workers: usize,
    /// Generations running now (requests and stream frames).
    running: usize,
    pending_frames: usize,
    dropped_frames: u64,
    last_latency_ms: Option<u64>,
    images_generated: u64,
    errors: u64,
    requests_accepted: u64,
    duplicates_ignored: u64,
    replays: u64,
    answer_cache_bytes: usize,
    protocol: u8,
    version: &'static str,
}

/// What a client may ask for (the tablet page's controls): defaults and bounds.
#[derive(Serialize)]
struct GenerationSummary {
    /// Steps of a request that does not ask.
    steps: usize,
    /// Strength of a request that does not ask.
    strength: f32,
    max_steps: usize,
    max_strength: f32,
    /// The only step counts a distilled model takes; `None`: any in `1..=max_steps`.
    sample_steps: Option<Vec<usize>>,
    /// Whether requests may carry `prompt`, `negative_prompt` and `guidance_scale`.
    text: bool,
    /// The prompt of requests that give none (text models only).
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
    /// The guidance scale of requests that give none (text models only).
    #[serde(skip_serializing_if = "Option::is_none")]
    guidance_scale: Option<f32>,
}

#[derive(Serialize)]
struct ModelSummary<'a> {
    id: &'a str,
    image_size: usize,
    channels: usize,
    base: &'a str,
    mcm: Option<&'a str>,
    cond_channels: usize,
    /// `pixel` or `latent` (contract 2's `[latent]`: the base denoises latents that decoder.onnx decodes).
    space: &'static str,
    /// Whether the base takes a prompt (contract 2's `[text]`).
    text: bool,
    /// The sampler: `ddim`, `euler` or `lcm`.
    sampler: &'static str,
}

impl Ctx {
    /// Redraw the status display: at once for `Offline` (the last frame), otherwise at most every
    /// `display.refresh_ms`. A failed write is logged, never fatal.
    pub(super) fn refresh_display(&self, broker: BrokerState) {
        let mut display = lock(&self.display);
        let state = || {
            let queue_depth = lock(&self.shared.pending).requests.len();
            let stats = lock(&self.shared.stats);
            PanelState {
                device_id: self.config.mqtt.device_id.clone(),
                broker,
                last_input: stats.last_input.clone(),
                last_output: stats.last_output.clone(),
                last_latency_ms: stats.last_latency_ms,
                queue_depth,
                queue_capacity: self.config.limits.queue_depth,
                images_generated: stats.summary.images_generated,
                errors: stats.summary.errors,
            }
        };
        let shown = match broker {
            BrokerState::Offline => display.show_now(&state()),
            _ if display.due() => display.show_now(&state()),
            _ => Ok(()),
        };
        // The first failure is a warning, repeats are not (a redraw is tried twice a second).
        match shown {
            Ok(()) => self.shared.display_failing.store(false, Ordering::Relaxed),
            Err(e) if !self.shared.display_failing.swap(true, Ordering::Relaxed) => log::warn!("status display: {e}"),
            Err(e) => log::debug!("status display: {e}"),
        }
    }

    /// The broker state for the display, from the loop thread's view.
    pub(super) fn broker_state(&self) -> BrokerState {
        if self.connected.load(Ordering::SeqCst) { BrokerState::Online } else { BrokerState::Connecting }
    }

    /// Keep the pictures of the last input and output for the display (when it is on).
    pub(super) fn record_images(&self, maps: &Maps, output: &RgbImage) {
        if !self.config.display.enabled {
            return;
        }
        let info = self.generator.info();
        let input = info.modalities.iter().find_map(|m| maps.get(&m.name).map(|map| render_map(map, m)));
        let mut stats = lock(&self.shared.stats);
        stats.last_input = input;
        stats.last_output = Some(output.clone());
    }

    fn generation_summary(&self) -> GenerationSummary {
        let (g, l, info) = (&self.config.generation, &self.config.limits, self.generator.info());
        let sample_steps = info.schedule.timesteps.as_ref().map(|grid| vec![grid.len()]);
        let max_steps = l.max_steps.min(info.schedule.num_train_timesteps);
        let text = g.text_for(info);
        let guidance_scale = info.text.as_ref().map(|t| text.guidance_scale.or(t.guidance_scale).unwrap_or(DEFAULT_GUIDANCE_SCALE));
        GenerationSummary {
            steps: g.steps_for(info),
            strength: g.strength_for(info),
            max_steps,
            max_strength: l.max_strength,
            sample_steps,
            text: info.text.is_some(),
            prompt: info.text.as_ref().map(|_| text.prompt),
            guidance_scale,
        }
    }

    /// Publish the retained status (and refresh the display).
    pub(super) fn publish_status(&self) {
        let _order = lock(&self.shared.status_order);
        let (queue_depth, pending_frames, running) = {
            let p = lock(&self.shared.pending);
            (p.requests.len(), p.frames.len(), p.busy)
        };
        let stats = lock(&self.shared.stats);
        let info = self.generator.info();
        let status = Status {
            state: if running > 0 { "busy" } else { "online" },
            device_id: &self.config.mqtt.device_id,
            model: ModelSummary {
                id: &self.model_id,
                image_size: info.image.size,
                channels: info.image.channels,
                base: &info.base.file,
                mcm: info.mcm.as_ref().map(|m| m.file.as_str()),
                cond_channels: info.cond_channels(),
                space: if info.latent.is_some() { "latent" } else { "pixel" },
                text: info.text.is_some(),
                sampler: info.schedule.sampler.name(),
            },
            modalities: &info.modalities,
            generation: self.generation_summary(),
            queue_depth,
            queue_capacity: self.config.limits.queue_depth,
            workers: self.config.runtime.workers,
            running,
            pending_frames,
            dropped_frames: stats.summary.dropped_frames,
            last_latency_ms: stats.last_latency_ms,
            images_generated: stats.summary.images_generated,
            errors: stats.summary.errors,
            requests_accepted: stats.summary.requests_accepted,
            duplicates_ignored: stats.summary.duplicates_ignored,
            replays: stats.summary.replays,
            answer_cache_bytes: lock(&self.shared.answers).bytes(),
            protocol: self.config.mqtt.protocol.into(),
            version: env!("CARGO_PKG_VERSION"),
        };
        let body = match serde_json::to_vec(&status) {
            Ok(b) => b,
            Err(e) => {
                log::error!("cannot serialize the status: {e}");
                return;
            }
        };
        drop(stats);
        let topic = format!("{}status", self.prefix);
        if let Err(e) = self.out.publish(&topic, body, true, None) {
            log::warn!("cannot publish the status: {e}");
        }
        self.refresh_display(self.broker_state());
    }
}

