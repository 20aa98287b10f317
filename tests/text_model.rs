//! A latent, text-conditional model (contract 2: `models/tiny-sd`, a tiny random Stable
//! Diffusion-style pipeline imported by `mcm-train export-diffusers` with an MCM trained by
//! `mcm-train mcm`) on the device: prompts, negative prompts, classifier-free guidance and the
//! MCM through the real pipeline, and over MQTT from a request to a PNG.

mod support;

use mcm_edge::diffusion::{Pipeline, TextParams};
use mcm_edge::error_code::ErrorCode;
use mcm_edge::frames::{FrameLimits, decode_frame};
use mcm_edge::runtime::Backend;
use support::*;

fn tiny_sd() -> Pipeline {
    Pipeline::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-sd"), &Backend::default()).unwrap()
}

fn params(prompt: &str, guidance_scale: Option<f32>, strength: f32) -> GenerationParams {
    GenerationParams {
        seed: 5,
        steps: 3,
        strength,
        eta: 0.0,
        text: TextParams { prompt: prompt.into(), negative_prompt: String::new(), guidance_scale },
    }
}

/// A sketch frame: one dark horizontal stroke across a light 32x32 page.
fn sketch_png() -> Vec<u8> {
    png(&RgbImage::from_fn(32, 32, |_, y| if y == 16 { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) }))
}

fn sketch_maps(info: &ModelInfo) -> Maps {
    let map = decode_frame(&sketch_png(), info.modality("sketch").unwrap(), info.image.size, &FrameLimits::default()).unwrap();
    [("sketch".to_string(), map)].into()
}

/// With 2 threads tract runs classifier-free guidance's two passes at once: the same image.
#[test]
fn guidance_passes_at_once_give_the_same_image() {
    let two = Pipeline::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-sd"), &Backend::tract(2)).unwrap();
    let one = tiny_sd();
    let maps = sketch_maps(one.info());
    let p = GenerationParams { text: TextParams { negative_prompt: "rain".into(), ..params("a red boat", Some(5.0), 1.0).text }, ..params("", None, 1.0) };
    assert_eq!(two.generate(&maps, &p).unwrap(), one.generate(&maps, &p).unwrap());
}

#[test]
fn prompts_guidance_and_the_mcm_each_change_the_image() {
    let g = tiny_sd();
    let info = g.info().clone();
    assert!(info.text.is_some() && info.latent.is_some() && info.mcm.is_some());
    let maps = sketch_maps(&info);
    let a = g.generate(&maps, &params("a lake under a blue sky", None, 1.0)).unwrap();
    assert_eq!(a.dimensions(), (16, 16), "decoded from the 2x2 latent grid");
    assert_eq!(a, g.generate(&maps, &params("a lake under a blue sky", None, 1.0)).unwrap(), "deterministic");
    let differ = |x: &RgbImage, y: &RgbImage| x.as_raw().iter().zip(y.as_raw()).filter(|(p, q)| p != q).count();
    let other_prompt = g.generate(&maps, &params("snow on the mountains", None, 1.0)).unwrap();
    let no_guidance = g.generate(&maps, &params("a lake under a blue sky", Some(1.0), 1.0)).unwrap();
    let base_alone = g.generate(&maps, &params("a lake under a blue sky", None, 0.0)).unwrap();
    let mut negative = params("a lake under a blue sky", None, 1.0);
    negative.text.negative_prompt = "blurry, grey".into();
    let negative = g.generate(&maps, &negative).unwrap();
    for (what, img) in [("prompt", &other_prompt), ("guidance", &no_guidance), ("strength", &base_alone), ("negative prompt", &negative)] {
        assert!(differ(&a, img) > 0, "the {what} changes the image");
    }
    // A prompt alone (no maps) generates too; a guidance scale out of range is a clear error.
    g.generate(&Maps::new(), &params("a lake", None, 1.0)).unwrap();
    let err = g.generate(&maps, &params("a lake", Some(99.0), 1.0)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidParams);
    assert!(err.to_string().contains("guidance_scale"), "{err}");
}

#[test]
fn a_model_without_text_refuses_a_prompt() {
    let g = Pipeline::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny"), &Backend::default()).unwrap();
    let err = g.generate(&Maps::new(), &params("a lake", None, 0.0)).unwrap_err().to_string();
    assert!(err.contains("takes no prompt"), "{err}");
}

#[test]
fn a_prompt_over_mqtt_gets_the_pipelines_png() {
    let broker = rumqttd();
    let mut config = test_config(broker.port, MqttProtocol::V311);
    config.model.dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-sd");
    config.generation.steps = 3;
    config.generation.prompt = "a landscape with mountains".into();
    let prefix = config.mqtt.topic_prefix();
    let mut tc = TestClient::connect(config.mqtt.port, MqttProtocol::V311);
    tc.subscribe(&format!("{prefix}#"));
    let shutdown = Arc::new(AtomicBool::new(false));
    let generator: Arc<dyn ImageGenerator> = Arc::new(tiny_sd());
    let handle = {
        let (config, generator, shutdown) = (config.clone(), Arc::clone(&generator), Arc::clone(&shutdown));
        std::thread::spawn(move || service::run(&config, generator, shutdown))
    };
    let status = tc.wait_for("online status", |m| m.topic == format!("{prefix}status") && m.json()["state"] == "online").json();
    assert_eq!((status["model"]["text"].clone(), status["model"]["space"].clone()), (json!(true), json!("latent")));
    assert_eq!(status["model"]["sampler"], "ddim");
    assert_eq!((status["generation"]["text"].clone(), status["generation"]["guidance_scale"].clone()), (json!(true), json!(7.5)));
    assert_eq!(status["generation"]["prompt"], "a landscape with mountains");

    let b64 = base64::engine::general_purpose::STANDARD;
    let ask = |body: Value| tc.publish(&format!("{prefix}request"), serde_json::to_vec(&body).unwrap());
    ask(json!({"id": "lake", "seed": 5, "steps": 3, "prompt": "a lake under a blue sky", "frames": {"sketch": b64.encode(sketch_png())}}));
    ask(json!({"id": "prompt-only", "seed": 5, "prompt": "snow on the mountains", "guidance_scale": 4.0}));
    ask(json!({"id": "default-prompt", "seed": 5, "frames": {"sketch": b64.encode(sketch_png())}}));
    ask(json!({"id": "too-guided", "prompt": "a lake", "guidance_scale": 31, "frames": {"sketch": b64.encode(sketch_png())}}));
    ask(json!({"id": "nothing", "frames": {}})); // the [generation] prompt alone
    ask(json!({"id": "long", "prompt": "a".repeat(2001)}));
    let image = |tc: &mut TestClient, id: &str| {
        let m = tc.wait_for(id, |m| m.topic == format!("{prefix}image/{id}"));
        image::load_from_memory(&m.payload).unwrap().to_rgb8()
    };
    let lake = image(&mut tc, "lake");
    let direct = tiny_sd().generate(&sketch_maps(tc_info()), &params("a lake under a blue sky", None, 1.0)).unwrap();
    assert_eq!(lake, direct, "the service ran the pipeline with the request's prompt");
    assert_eq!(image(&mut tc, "prompt-only").dimensions(), (16, 16));
    let with_default = image(&mut tc, "default-prompt");
    let direct = tiny_sd().generate(&sketch_maps(tc_info()), &params("a landscape with mountains", None, 1.0)).unwrap();
    assert_eq!(with_default, direct, "[generation] prompt fills in");
    assert_eq!(image(&mut tc, "nothing").dimensions(), (16, 16));
    for (id, code) in [("too-guided", "invalid_guidance_scale"), ("long", "invalid_prompt")] {
        let err = tc.wait_for(id, |m| m.topic == format!("{prefix}error") && m.json()["id"] == id).json();
        assert_eq!(err["code"], code, "{err}");
    }
    shutdown.store(true, Ordering::SeqCst);
    handle.join().unwrap().unwrap();
}

fn tc_info() -> &'static ModelInfo {
    static INFO: OnceLock<ModelInfo> = OnceLock::new();
    INFO.get_or_init(|| ModelInfo::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-sd")).unwrap())
}
