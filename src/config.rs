//! `edge.toml`: the device service configuration (MQTT connection, model directory, generation
//! defaults, limits, inference backend).
//!
//! Every key but `mqtt.device_id` is optional and has a default (see [`EdgeConfig::default`] and
//! the commented `config/edge.toml`); the device id is required because it names the client id
//! and topics, which must differ between the devices of a fleet. Unknown keys are refused so that
//! a typo does not silently fall back to a default. Errors name the file and the key.
//!
//! Each section is defined by the module it configures (`[mqtt]`: [`MqttConfig`], `[display]`:
//! [`DisplayConfig`], `[runtime]`: [`RuntimeConfig`], `[web]`: [`WebConfig`]) and re-exported
//! here; the service's own sections (`[model]`, `[generation]`, `[limits]`, `[home_assistant]`)
//! are defined here. Every range is checked here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::display::DisplayConfig;
pub use crate::mqtt::{MqttConfig, MqttProtocol, Secret, TlsConfig};
use crate::contract::ModelInfo;
use crate::diffusion::{MAX_STRENGTH, TextParamError, TextParams};
use crate::mqtt::{parse_url, topic_text_ok, valid_filter};
pub use crate::runtime::RuntimeConfig;
pub use crate::web::WebConfig;
use crate::runtime::{BackendKind, MAX_THREADS, MAX_WORKERS, NO_ONNXRUNTIME, ONNXRUNTIME_BUILT_IN};

/// One mebibyte in bytes.
const MIB: usize = 1024 * 1024;

/// Errors reading or checking a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The TOML is malformed, a key is unknown or a value has the wrong type (the message names
    /// the key and the line).
    #[error("{path}: invalid config: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value has the right type but is out of range or inconsistent with another.
    #[error("{path}: {key}: {message}")]
    Invalid { path: PathBuf, key: &'static str, message: String },
}

/// The whole `edge.toml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// `[mqtt]`: broker connection and topics.
    pub mqtt: MqttConfig,
    /// `[model]`: which model directory to load.
    pub model: ModelConfig,
    /// `[generation]`: defaults of a generation when a request does not set them.
    pub generation: GenerationConfig,
    /// `[limits]`: bounds on input sizes and queues.
    pub limits: LimitsConfig,
    /// `[display]`: the status panel (framebuffer or PNG preview).
    pub display: DisplayConfig,
    /// `[runtime]`: which inference backend runs the model.
    pub runtime: RuntimeConfig,
    /// `[web]`: the tablet page served by the device.
    pub web: WebConfig,
    /// `[home_assistant]`: MQTT discovery of the generated image as a Home Assistant entity.
    pub home_assistant: HomeAssistantConfig,
}

/// `[model]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Model directory holding `model.toml`, `base.onnx`, `mcm.onnx` (relative to the working
    /// directory).
    pub dir: PathBuf,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { dir: PathBuf::from("models/default") }
    }
}

/// Where the seed of a generation comes from when the request does not give one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedPolicy {
    /// Always `fixed_seed`: a stream of similar frames gives stable images.
    Fixed,
    /// A fresh random seed for every generation.
    Random,
    /// `fixed_seed`, `fixed_seed + 1`, ... one per generation.
    Counter,
}

/// `[generation]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationConfig {
    /// DDIM steps when a request does not set `steps` (and for stream frames).
    pub steps: usize,
    /// DDIM eta (0 = deterministic DDIM, 1 = DDPM-like).
    pub eta: f32,
    /// Conditioning strength when a request does not set `strength` (0 = base alone, 1 = MCM).
    pub strength: f32,
    /// Seed policy: `fixed`, `random` or `counter`.
    pub seed_policy: SeedPolicy,
    /// The seed of the `fixed` policy and the first seed of the `counter` policy.
    pub fixed_seed: u64,
    /// Text-conditional models: the prompt of requests that give none, and of stream frames.
    pub prompt: String,
    /// Text-conditional models: the negative prompt of requests that give none ("" = unconditional).
    pub negative_prompt: String,
    /// Text-conditional models: the classifier-free guidance scale of requests that give none
    /// (0..=30); absent: the model's own (`[text] guidance_scale` of its model.toml).
    pub guidance_scale: Option<f32>,
}

impl GenerationConfig {
    /// Steps of a generation that does not ask for a count: a distilled model's own count
    /// (`[schedule] timesteps` of its model.toml), else `steps`.
    pub fn steps_for(&self, info: &ModelInfo) -> usize {
        info.schedule.timesteps.as_ref().map_or(self.steps, Vec::len)
    }

    /// Strength of a generation that does not ask for one: `strength`, or 0 for a base without an
    /// MCM (nothing to mix in; any other strength would be refused).
    pub fn strength_for(&self, info: &ModelInfo) -> f32 {
        if info.mcm.is_some() { self.strength } else { 0.0 }
    }

    /// The prompt settings of requests that give none and of stream frames, for a model with
    /// text (`info.text`); none at all for a model without.
    pub fn text_for(&self, info: &ModelInfo) -> TextParams {
        match info.text {
            Some(_) => TextParams { prompt: self.prompt.clone(), negative_prompt: self.negative_prompt.clone(), guidance_scale: self.guidance_scale },
            None => TextParams::default(),
        }
    }
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            steps: 20,
            eta: 0.0,
            strength: 1.0,
            seed_policy: SeedPolicy::Fixed,
            fixed_seed: 0,
            prompt: String::new(),
            negative_prompt: String::new(),
            guidance_scale: None,
        }
    }
}

/// `[limits]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest encoded frame (PNG/JPEG bytes, after base64 decoding for requests), in bytes.
    pub max_payload_bytes: usize,
    /// Largest frame in pixels (width x height), checked before decoding.
    pub max_pixels: u64,
    /// Largest `steps` a request may ask for.
    pub max_steps: usize,
    /// Accepted requests waiting for generation; one more is refused with `queue_full`.
    pub queue_depth: usize,
    /// How many recent answers are kept for retried request ids (also bounded by
    /// `answer_cache_bytes`); more than `queue_depth`.
    pub recent_ids: usize,
    /// Largest strength a request may ask for, at most [`MAX_STRENGTH`].
    pub max_strength: f32,
    /// Largest share (0..=1) of a colour segmentation frame's pixels that may be far from every
    /// class colour ([`crate::frames::FrameLimits::max_far_share`]).
    pub max_far_share: f32,
    /// Bytes of recent answers (images and errors) kept to answer a retried request id again
    /// (idempotent retries); 0 turns replays off.
    pub answer_cache_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_payload_bytes: 8 * MIB,
            max_pixels: 4096 * 4096,
            max_steps: 200,
            queue_depth: 8,
            recent_ids: 1024,
            max_strength: MAX_STRENGTH,
            max_far_share: 0.2,
            answer_cache_bytes: 16 * MIB,
        }
    }
}

/// `[home_assistant]` section: MQTT discovery (README "Home Assistant").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HomeAssistantConfig {
    /// Publish the discovery message (retained) on every connect and when Home Assistant's birth
    /// message appears.
    pub enabled: bool,
    /// Home Assistant's discovery prefix (its MQTT integration setting).
    pub discovery_prefix: String,
    /// Entity name shown in Home Assistant.
    pub name: String,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig { enabled: false, discovery_prefix: "homeassistant".into(), name: "Generated image".into() }
    }
}

impl EdgeConfig {
    /// Read and check a TOML file.
    ///
    /// # Errors
    /// [`ConfigError::Io`] when unreadable, [`ConfigError::Parse`] for bad TOML, unknown keys or
    /// wrong types, [`ConfigError::Invalid`] for values out of range.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parse and check TOML `text`; `path` is only used in error messages.
    ///
    /// # Errors
    /// As [`EdgeConfig::load`], without [`ConfigError::Io`].
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() };
        let table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        if table.get("mqtt").and_then(|m| m.get("device_id")).is_none() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "mqtt.device_id",
                message: "missing: every device needs its own id (it names the MQTT client id and topics)".into(),
            });
        }
        let config: EdgeConfig = table.try_into().map_err(parse_error)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Check ranges and consistency; `path` is only used in error messages.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad key.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.check().map_err(|BadValue { key, message }| ConfigError::Invalid { path: path.to_path_buf(), key, message })
    }

    /// The section checks, in file order; the first bad value.
    fn check(&self) -> Result<(), BadValue> {
        check_mqtt(&self.mqtt)?;
        check_generation(&self.generation, &self.limits)?;
        check_limits(&self.limits, &self.mqtt)?;
        self.display.validate().map_err(|e| BadValue { key: "display", message: e.to_string() })?;
        check_runtime(&self.runtime)?;
        self.web.validate().map_err(|(key, message)| BadValue { key, message })?;
        check_home_assistant(&self.home_assistant)
    }
}

/// A value out of range or inconsistent with another: its key and why (the file is added by
/// [`EdgeConfig::validate`]).
struct BadValue {
    key: &'static str,
    message: String,
}

/// `Err` of a [`BadValue`].
fn bad(key: &'static str, message: String) -> Result<(), BadValue> {
    Err(BadValue { key, message })
}

/// `[mqtt]`: identity, topics, broker address, packet size, QoS, credentials, reconnects, TLS.
fn check_mqtt(m: &MqttConfig) -> Result<(), BadValue> {
    if m.device_id.is_empty() || m.device_id.contains(['/', '+', '#']) || !topic_text_ok(&m.device_id) {
        return bad("mqtt.device_id", format!("{:?} must be non-empty without '/', '+', '#' or control characters", m.device_id));
    }
    if let Some(id) = &m.client_id
        && id.is_empty()
    {
        return bad("mqtt.client_id", "must not be empty (omit it for the default)".into());
    }
    if let Some(p) = &m.topic_prefix
        && (p.contains(['+', '#']) || !topic_text_ok(p))
    {
        return bad("mqtt.topic_prefix", format!("{p:?} must not contain wildcards '+' or '#' or control characters"));
    }
    if let Some(f) = &m.request_filter
        && !valid_filter(f)
    {
        return bad("mqtt.request_filter", format!("{f:?} is not a valid MQTT topic filter"));
    }
    if let Some(url) = &m.url {
        if let Err(e) = parse_url(url) {
            return bad("mqtt.url", e.to_string());
        }
    } else if m.host.is_empty() {
        return bad("mqtt.host", "must not be empty".into());
    }
    if !(5..=u64::from(u16::MAX)).contains(&m.keep_alive_s) {
        return bad("mqtt.keep_alive_s", format!("{} s must be within 5..=65535 s (MQTT's keep-alive is 16 bits)", m.keep_alive_s));
    }
    if m.max_packet_bytes < 1024 || m.max_packet_bytes > 256 * MIB {
        return bad("mqtt.max_packet_bytes", format!("{} must be within 1 KiB..=256 MiB", m.max_packet_bytes));
    }
    if m.qos > 2 {
        return bad("mqtt.qos", format!("{} must be 0, 1 or 2", m.qos));
    }
    if m.password.is_some() && m.username.is_none() {
        return bad("mqtt.password", "needs mqtt.username".into());
    }
    if m.password_file.is_some() && (m.username.is_none() || m.password.is_some()) {
        return bad("mqtt.password_file", "needs mqtt.username, and excludes mqtt.password".into());
    }
    if m.reconnect_delay_ms == 0 || m.reconnect_max_delay_ms < m.reconnect_delay_ms {
        return bad(
            "mqtt.reconnect_max_delay_ms",
            format!("{} must be >= mqtt.reconnect_delay_ms ({}) > 0", m.reconnect_max_delay_ms, m.reconnect_delay_ms),
        );
    }
    if let Some(tls) = &m.tls
        && tls.client_cert_file.is_some() != tls.client_key_file.is_some()
    {
        return bad("mqtt.tls", "client_cert_file and client_key_file go together".into());
    }
    Ok(())
}

/// `[generation]`, against the limits it must stay within.
fn check_generation(g: &GenerationConfig, l: &LimitsConfig) -> Result<(), BadValue> {
    if g.steps == 0 || g.steps > l.max_steps {
        return bad("generation.steps", format!("{} must be within 1..={} (limits.max_steps)", g.steps, l.max_steps));
    }
    if !(0.0..=1.0).contains(&g.eta) {
        return bad("generation.eta", format!("{} must be within 0..=1", g.eta));
    }
    if !g.strength.is_finite() || g.strength < 0.0 || g.strength > l.max_strength {
        return bad("generation.strength", format!("{} must be within 0..={} (limits.max_strength)", g.strength, l.max_strength));
    }
    let text = TextParams { prompt: g.prompt.clone(), negative_prompt: g.negative_prompt.clone(), guidance_scale: g.guidance_scale };
    match text.check() {
        Ok(()) => Ok(()),
        Err(e @ TextParamError::PromptTooLong { field, .. }) => bad(if field == "prompt" { "generation.prompt" } else { "generation.negative_prompt" }, e.to_string()),
        Err(e @ TextParamError::GuidanceScale(_)) => bad("generation.guidance_scale", e.to_string()),
    }
}

/// `[limits]`, against the MQTT packet size.
fn check_limits(l: &LimitsConfig, m: &MqttConfig) -> Result<(), BadValue> {
    if l.max_payload_bytes == 0 || l.max_payload_bytes > m.max_packet_bytes {
        return bad(
            "limits.max_payload_bytes",
            format!("{} must be within 1..={} (mqtt.max_packet_bytes)", l.max_payload_bytes, m.max_packet_bytes),
        );
    }
    if l.max_pixels == 0 {
        return bad("limits.max_pixels", "must be positive".into());
    }
    if l.max_steps == 0 {
        return bad("limits.max_steps", "must be positive".into());
    }
    if l.queue_depth == 0 || l.queue_depth > 10_000 {
        return bad("limits.queue_depth", format!("{} must be within 1..=10000", l.queue_depth));
    }
    if l.recent_ids <= l.queue_depth {
        return bad("limits.recent_ids", format!("{} must exceed limits.queue_depth ({})", l.recent_ids, l.queue_depth));
    }
    if !l.max_strength.is_finite() || !(0.0..=MAX_STRENGTH).contains(&l.max_strength) {
        return bad("limits.max_strength", format!("{} must be within 0..={MAX_STRENGTH} (what the sampler allows)", l.max_strength));
    }
    if !(0.0..=1.0).contains(&l.max_far_share) {
        return bad("limits.max_far_share", format!("{} must be within 0..=1", l.max_far_share));
    }
    Ok(())
}

/// `[home_assistant]`: a usable discovery prefix.
fn check_home_assistant(h: &HomeAssistantConfig) -> Result<(), BadValue> {
    let p = &h.discovery_prefix;
    if p.is_empty() || p.contains(['+', '#']) || p.ends_with('/') || !topic_text_ok(p) {
        return bad("home_assistant.discovery_prefix", format!("{p:?} must be a topic without wildcards or a trailing '/'"));
    }
    Ok(())
}

/// `[runtime]`: a backend this binary has, a thread count and a worker count.
fn check_runtime(r: &RuntimeConfig) -> Result<(), BadValue> {
    if r.backend == BackendKind::Onnxruntime && !ONNXRUNTIME_BUILT_IN {
        return bad("runtime.backend", NO_ONNXRUNTIME.into());
    }
    if let Some(threads) = r.threads
        && !(1..=MAX_THREADS).contains(&threads)
    {
        return bad("runtime.threads", format!("{threads} must be within 1..={MAX_THREADS}"));
    }
    if !(1..=MAX_WORKERS).contains(&r.workers) {
        return bad("runtime.workers", format!("{} must be within 1..={MAX_WORKERS}", r.workers));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Backend, Precision, available_cores};

    /// Parse `text` with `mqtt.device_id = "edge-1"` added when it has none.
    fn parse(text: &str) -> Result<EdgeConfig, ConfigError> {
        let id = "device_id = \"edge-1\"\n";
        let text = if text.contains("device_id") {
            text.to_string()
        } else if text.contains("[mqtt]\n") {
            text.replacen("[mqtt]\n", &format!("[mqtt]\n{id}"), 1)
        } else {
            format!("[mqtt]\n{id}{text}")
        };
        EdgeConfig::parse(&text, Path::new("edge.toml"))
    }

    #[test]
    fn a_file_with_only_the_device_id_gives_defaults() {
        let c = parse("[mqtt]\ndevice_id = \"edge-1\"\n").unwrap();
        assert_eq!(c, EdgeConfig::default());
        assert_eq!(c.mqtt.topic_prefix(), "mcm/edge-1/");
        assert_eq!(c.mqtt.client_id(), "mcm-edge-edge-1");
        assert_eq!(c.mqtt.max_packet_bytes, 16 * MIB);
        assert_eq!(c.model.dir, PathBuf::from("models/default"));
    }

    #[test]
    fn shipped_config_parses_to_the_defaults_but_the_tuned_strength() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/edge.toml");
        let c = EdgeConfig::load(&path).unwrap();
        // The one documented deviation: the strength models/default scores best with (README).
        let mut expected = EdgeConfig::default();
        expected.generation.strength = 1.5;
        assert_eq!(c, expected);
    }

    #[test]
    fn keys_are_read() {
        let c = parse(
            "[mqtt]\ndevice_id = \"cam7\"\nprotocol = 5\ntopic_prefix = \"site/a\"\nqos = 0\n\
             [generation]\nseed_policy = \"random\"\nsteps = 10\n[limits]\nqueue_depth = 2\n",
        )
        .unwrap();
        assert_eq!(c.mqtt.protocol, MqttProtocol::V5);
        assert_eq!(c.mqtt.topic_prefix(), "site/a/");
        assert_eq!(c.mqtt.client_id(), "mcm-edge-cam7");
        assert_eq!(c.generation.seed_policy, SeedPolicy::Random);
        assert_eq!(c.limits.queue_depth, 2);
    }

    #[test]
    fn missing_device_id_is_refused() {
        for text in ["", "[mqtt]\nport = 1\n"] {
            let e = EdgeConfig::parse(text, Path::new("edge.toml")).unwrap_err().to_string();
            assert!(e.contains("edge.toml") && e.contains("mqtt.device_id") && e.contains("missing"), "{e}");
        }
    }

    #[test]
    fn tls_from_section_or_url_and_secrets_hidden() {
        let c = parse("[mqtt]\ndevice_id = \"d\"\nurl = \"mqtts://b\"\nusername = \"u\"\npassword = \"pw-123\"\n").unwrap();
        assert_eq!(c.mqtt.tls(), Some(TlsConfig::default()));
        assert_eq!(c.mqtt.broker_address().unwrap(), ("b".into(), 8883));
        assert!(!format!("{c:?}").contains("pw-123"));
        let c = parse("[mqtt]\ndevice_id = \"d\"\n[mqtt.tls]\nca_file = \"ca.pem\"\n").unwrap();
        assert_eq!(c.mqtt.tls().unwrap().ca_file, Some(PathBuf::from("ca.pem")));
        let e = parse("[mqtt]\ndevice_id = \"d\"\n[mqtt.tls]\nclient_cert_file = \"c.pem\"\n").unwrap_err().to_string();
        assert!(e.contains("mqtt.tls"), "{e}");
        let e = parse("[mqtt]\ndevice_id = \"d\"\n[display]\nwidth = 2\n").unwrap_err().to_string();
        assert!(e.contains("display") && e.contains("width"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused_with_its_name_and_the_file() {
        let e = parse("[mqtt]\nhots = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("edge.toml") && e.contains("hots"), "{e}");
        let e = parse("[mqt]\n").unwrap_err().to_string();
        assert!(e.contains("mqt"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = parse("[mqtt]\nprotocol = 6\n").unwrap_err().to_string();
        assert!(e.contains("protocol"), "{e}");
        let e = parse("[limits]\nqueue_depth = 0\n").unwrap_err().to_string();
        assert!(e.contains("limits.queue_depth"), "{e}");
        let e = parse("[mqtt]\ndevice_id = \"a/b\"\n").unwrap_err().to_string();
        assert!(e.contains("mqtt.device_id"), "{e}");
        let e = parse("[mqtt]\ndevice_id = \"ed\\nge\"\n").unwrap_err().to_string();
        assert!(e.contains("mqtt.device_id"), "{e}");
        let e = parse("[generation]\nsteps = 500\n").unwrap_err().to_string();
        assert!(e.contains("generation.steps"), "{e}");
        let e = parse("[mqtt]\nmax_packet_bytes = 1000000\n").unwrap_err().to_string();
        assert!(e.contains("limits.max_payload_bytes"), "{e}");
        let e = parse("[mqtt]\nurl = \"http://x\"\n").unwrap_err().to_string();
        assert!(e.contains("mqtt.url"), "{e}");
    }

    #[test]
    fn limits_the_sampler_or_mqtt_cannot_honour_are_refused() {
        // The sampler refuses strength > MAX_STRENGTH: a larger limit would accept requests
        // (and a default) that then fail with invalid_params.
        let e = parse("[limits]\nmax_strength = 15.0\n").unwrap_err().to_string();
        assert!(e.contains("limits.max_strength") && e.contains("10"), "{e}");
        let e = parse("[generation]\nstrength = 15.0\n[limits]\nmax_strength = 15.0\n").unwrap_err().to_string();
        assert!(e.contains("max_strength"), "{e}");
        assert_eq!(parse("[limits]\nmax_strength = 10.0\n").unwrap().limits.max_strength, MAX_STRENGTH);
        // MQTT's keep-alive is 16 bits: 65536 would silently turn it off.
        let e = parse("[mqtt]\nkeep_alive_s = 65536\n").unwrap_err().to_string();
        assert!(e.contains("mqtt.keep_alive_s") && e.contains("65535"), "{e}");
        assert_eq!(parse("[mqtt]\nkeep_alive_s = 65535\n").unwrap().mqtt.keep_alive_s, 65535);
        let e = parse("[limits]\nmax_far_share = 1.5\n").unwrap_err().to_string();
        assert!(e.contains("limits.max_far_share"), "{e}");
    }

    #[test]
    fn runtime_section_selects_the_backend() {
        // Default: tract on every core this process may use, one generation at a time.
        assert_eq!(parse("").unwrap().runtime.backend(), Backend::tract(available_cores()));
        assert_eq!(parse("[runtime]\nthreads = 3\nworkers = 2\n").unwrap().runtime.backend(), Backend::tract(3).with_concurrency(2));
        let workers = parse("[runtime]\nworkers = 2\n").unwrap().runtime;
        assert_eq!(workers.threads(), (available_cores() / 2).max(1));
        for bad_workers in ["0", "65"] {
            let e = parse(&format!("[runtime]\nworkers = {bad_workers}\n")).unwrap_err().to_string();
            assert!(e.contains("runtime.workers"), "{e}");
        }
        let text = "[runtime]\nbackend = \"onnxruntime\"\nonnxruntime_library = \"/opt/ort/libonnxruntime.so\"\nthreads = 2\n";
        if ONNXRUNTIME_BUILT_IN {
            let want = Backend::new(BackendKind::Onnxruntime, Some(PathBuf::from("/opt/ort/libonnxruntime.so")), 2);
            assert_eq!(parse(text).unwrap().runtime.backend(), want);
        } else {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains("runtime.backend") && e.contains("onnxruntime feature"), "{e}");
        }
        let e = parse("[runtime]\nthreads = 0\n").unwrap_err().to_string();
        assert!(e.contains("runtime.threads"), "{e}");
        let f16 = parse("[runtime]\nprecision = \"f16\"\n").unwrap().runtime.backend();
        assert_eq!((f16.precision, f16.emulate_f16), (Precision::F16, false), "the service never emulates f16");
        let e = parse("[runtime]\nprecision = \"bf16\"\n").unwrap_err().to_string();
        assert!(e.contains("precision") && e.contains("bf16"), "{e}");
        let e = parse("[runtime]\nbackend = \"torch\"\n").unwrap_err().to_string();
        assert!(e.contains("backend") && e.contains("torch"), "{e}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = EdgeConfig::load(Path::new("/nonexistent/edge.toml")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/edge.toml"), "{e}");
    }

    #[test]
    fn url_sets_the_broker_address() {
        let c = parse("[mqtt]\nurl = \"mqtt://h:7\"\n").unwrap();
        assert_eq!(c.mqtt.broker_address().unwrap(), ("h".into(), 7));
    }

    #[test]
    fn defaults_follow_the_model_strength_without_an_mcm_and_prompts_with_text() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let g = GenerationConfig { strength: 1.5, prompt: "a lake".into(), ..GenerationConfig::default() };
        let sd = ModelInfo::load(&dir.join("tiny-sd")).unwrap();
        assert_eq!((g.strength_for(&sd), g.text_for(&sd).prompt.as_str()), (1.5, "a lake"));
        let bare = ModelInfo { mcm: None, ..ModelInfo::load(&dir.join("tiny")).unwrap() };
        assert_eq!((g.strength_for(&bare), g.text_for(&bare)), (0.0, TextParams::default()), "a base alone: strength 0, no prompt");
    }
}
