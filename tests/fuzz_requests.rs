//! Property-based fuzzing (proptest) of the request parser ([`parse_body`] and
//! [`RequestBody::check`], JSON from MQTT) against models/tiny: it never panics, every refusal has
//! a snake_case code and carries the request id whenever the id could be read, and a valid request
//! is accepted with its parameters. Each property prints the number of inputs it tried
//! (`cargo test --release --test fuzz_requests -- --nocapture`).

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use proptest::prelude::*;
use serde_json::{Value, json};

use mcm_edge::contract::ModelInfo;
use mcm_edge::frames::FrameLimits;
use mcm_edge::service::request::{Refusal, RequestRules, parse_body};

const CASES: u32 = 3000;

fn info() -> &'static ModelInfo {
    static INFO: std::sync::OnceLock<ModelInfo> = std::sync::OnceLock::new();
    INFO.get_or_init(|| {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/models/tiny/model.toml")).unwrap();
        toml::from_str(&text).unwrap()
    })
}

fn rules() -> RequestRules<'static> {
    RequestRules {
        info: info(),
        frames: FrameLimits::new(64 * 1024, 512 * 512),
        max_steps: 50,
        max_strength: 4.0,
        default_steps: 20,
        default_strength: 1.0,
        default_text: &NO_TEXT,
    }
}

static NO_TEXT: mcm_edge::diffusion::TextParams =
    mcm_edge::diffusion::TextParams { prompt: String::new(), negative_prompt: String::new(), guidance_scale: None };

fn sample_b64() -> &'static str {
    static B64: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    B64.get_or_init(|| {
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/config/samples/segmentation/tablet-0.png")).unwrap();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    })
}

/// Parse and check `payload`; panics (a test failure) on a malformed refusal.
fn run(payload: &[u8]) -> Result<mcm_edge::service::request::Request, Refusal> {
    let result = parse_body(payload).and_then(|body| body.check(&rules()));
    if let Err(r) = &result {
        let code = r.code.as_str();
        assert!(!code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "code {code:?}");
        assert!(!r.message.is_empty());
        // The id is echoed whenever the payload is an object with a string id.
        if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(payload)
            && let Some(Value::String(id)) = o.get("id")
        {
            assert_eq!(r.id.as_deref(), Some(id.as_str()), "refusal {r:?}");
        }
    }
    result
}

/// JSON values of every type, nested a little.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::from),
        Just(Value::from(sample_b64())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,12}|segmentation|sketch", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Request-shaped objects: the real keys (and a stray one) with values of any type.
fn request_like() -> impl Strategy<Value = Value> {
    let key = prop_oneof![Just("id"), Just("frames"), Just("seed"), Just("steps"), Just("strength"), Just("extra")];
    prop::collection::btree_map(key, any_json(), 0..6).prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

static TRIED: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

fn report(i: usize, what: &str) {
    let n = TRIED[i].load(Ordering::Relaxed);
    if n == u64::from(CASES) {
        eprintln!("fuzz_requests: {what}: {n} inputs, 0 panics");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = run(&bytes);
        TRIED[0].fetch_add(1, Ordering::Relaxed);
        report(0, "arbitrary bytes");
    }

    #[test]
    fn request_shaped_json_never_panics(value in request_like()) {
        let _ = run(&serde_json::to_vec(&value).unwrap());
        TRIED[1].fetch_add(1, Ordering::Relaxed);
        report(1, "request-shaped JSON");
    }

    #[test]
    fn valid_requests_are_accepted_and_mutations_refused_cleanly(
        id in "[A-Za-z0-9._-]{1,128}",
        steps in 1u64..=50,
        strength in 0.0f64..=4.0,
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let payload = serde_json::to_vec(&json!({
            "id": id, "frames": { "segmentation": sample_b64() }, "steps": steps, "strength": strength, "seed": 7
        })).unwrap();
        let request = run(&payload).unwrap();
        prop_assert_eq!(&request.id, &id);
        prop_assert_eq!(request.steps as u64, steps);
        prop_assert!((f64::from(request.strength) - strength).abs() < 1e-6);
        prop_assert!(request.maps.contains_key("segmentation"));
        let mut mutated = payload.clone();
        let i = flip.index(mutated.len());
        mutated[i] = byte;
        let _ = run(&mutated);
        TRIED[2].fetch_add(1, Ordering::Relaxed);
        report(2, "valid requests and one-byte mutations");
    }
}
