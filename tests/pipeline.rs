//! The real device pipeline end to end: in-process broker, the service running tract on the
//! committed `models/tiny` fixture, a client sending a request with base64 PNG frames.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use image::{Rgb, RgbImage};
use mcm_edge::config::EdgeConfig;
use mcm_edge::contract::{Maps, ModalityMap};
use mcm_edge::diffusion::{GenerationParams, ImageGenerator, Pipeline, TextParams};
use mcm_edge::runtime::Backend;
use mcm_edge::service;
use mcm_edge::tools::bench::{BenchPlan, bench};
use mcm_edge::tools::broker;
use ndarray::Array2;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

fn tiny() -> Pipeline {
    Pipeline::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny"), &Backend::default()).unwrap()
}

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn generation_is_seeded_and_strength_matters() {
    let g = tiny();
    let ids = Array2::from_shape_fn((16, 16), |(y, _)| if y < 8 { 0u8 } else { 4 });
    let maps: Maps = [("segmentation".to_string(), ModalityMap::Segmentation(ids))].into();
    let p = GenerationParams { seed: 3, steps: 5, strength: 1.0, eta: 0.0, text: TextParams::default() };
    let a = g.generate(&maps, &p).unwrap();
    assert_eq!(a.dimensions(), (16, 16));
    assert_eq!(a, g.generate(&maps, &p).unwrap(), "same seed, same image");
    assert_ne!(a, g.generate(&maps, &GenerationParams { seed: 4, ..p.clone() }).unwrap());
    let base = g.generate(&maps, &GenerationParams { strength: 0.0, ..p.clone() }).unwrap();
    assert_ne!(a, base, "the (random, non-zero) MCM changes the image");
    // With strength 0 the maps are ignored: the base alone.
    assert_eq!(base, g.generate(&Maps::new(), &GenerationParams { strength: 0.0, ..p.clone() }).unwrap());
    // eta > 0 adds seeded noise.
    let noisy = GenerationParams { eta: 1.0, ..p };
    assert_eq!(g.generate(&maps, &noisy).unwrap(), g.generate(&maps, &noisy).unwrap());
}

/// Generations at once on one pipeline (`[runtime] workers`: shared plans, a run state per
/// caller) and on a 2-thread pool (`[runtime] threads`) give the images of one at a time on one
/// thread.
#[test]
fn concurrent_and_multithreaded_generations_match_one_at_a_time() {
    let ids = Array2::from_shape_fn((16, 16), |(y, x)| ((y / 4 + x / 8) % 5) as u8);
    let maps: Maps = [("segmentation".to_string(), ModalityMap::Segmentation(ids))].into();
    let params: Vec<GenerationParams> =
        (0..4).map(|seed| GenerationParams { seed, steps: 4, strength: 1.0, eta: 0.5, text: TextParams::default() }).collect();
    let one = tiny();
    let want: Vec<RgbImage> = params.iter().map(|p| one.generate(&maps, p).unwrap()).collect();
    for backend in [Backend::default(), Backend::tract(2)] {
        let g = Pipeline::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny"), &backend).unwrap();
        let got: Vec<RgbImage> = std::thread::scope(|s| {
            let handles: Vec<_> = params.iter().map(|p| s.spawn(|| g.generate(&maps, p).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(got, want, "{}", backend.describe());
    }
}

#[test]
fn a_distilled_base_of_either_prediction_samples_its_own_grid_only() {
    // models/tiny-v and models/tiny-x0: the tiny base's weights, read as v and as x_0, with a 4-step grid
    let maps: Maps = [("sketch".to_string(), ModalityMap::Sketch(Array2::zeros((16, 16))))].into();
    let p = GenerationParams { seed: 3, steps: 4, strength: 1.0, eta: 0.0, text: TextParams::default() };
    let eps_image = tiny().generate(&maps, &p).unwrap();
    let mut images = Vec::new();
    for fixture in ["models/tiny-v", "models/tiny-x0"] {
        let g = Pipeline::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(fixture), &Backend::default()).unwrap();
        let img = g.generate(&maps, &p).unwrap();
        assert_ne!(img, eps_image, "{fixture}: the same weights read as another prediction give another image");
        let err = g.generate(&maps, &GenerationParams { steps: 20, ..p.clone() }).unwrap_err().to_string();
        assert!(err.contains("distilled for 4 steps only"), "{fixture}: {err}");
        images.push(img);
    }
    assert_ne!(images[0], images[1], "v and x_0 are read differently");
}

#[test]
fn request_over_mqtt_is_answered_with_a_png_from_tract() {
    let broker = broker::start_local().unwrap();
    let mut config = EdgeConfig::default();
    config.mqtt.port = broker.port;
    config.mqtt.device_id = "pipeline-test".into();
    config.mqtt.clean_session = true;
    config.generation.steps = 4;
    let prefix = config.mqtt.topic_prefix();
    let shutdown = Arc::new(AtomicBool::new(false));
    let service = {
        let (config, shutdown) = (config.clone(), Arc::clone(&shutdown));
        std::thread::spawn(move || service::run(&config, Arc::new(tiny()) as Arc<dyn ImageGenerator>, shutdown))
    };

    let mut opts = MqttOptions::new("pipeline-test-client", "127.0.0.1", broker.port);
    opts.set_max_packet_size(1 << 24, 1 << 24);
    let (client, mut connection) = Client::new(opts, 16);
    client.subscribe(format!("{prefix}image/+"), QoS::AtLeastOnce).unwrap();
    client.subscribe(format!("{prefix}error"), QoS::AtLeastOnce).unwrap();
    client.subscribe(format!("{prefix}status"), QoS::AtLeastOnce).unwrap();
    // A 200x120 tablet frame: palette colours of sky over grass (resized to 16x16 on the device).
    let seg = RgbImage::from_fn(200, 120, |_, y| if y < 60 { Rgb([135, 206, 235]) } else { Rgb([0, 200, 0]) });
    let sketch = RgbImage::from_fn(200, 120, |_, y| if y == 60 { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) });
    // A 16-bit depth map (dense modality): far at the top, near at the bottom.
    let depth = {
        let ramp = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(200, 120, |_, y| image::Luma([(y * 540) as u16]));
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageLuma16(ramp).write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let request = serde_json::json!({
        "id": "req-1", "seed": 5, "steps": 3,
        "frames": {"segmentation": b64.encode(png(&seg)), "sketch": b64.encode(png(&sketch)), "depth": b64.encode(&depth)}
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = false;
    let mut answer = None;
    while answer.is_none() && Instant::now() < deadline {
        match connection.recv_timeout(Duration::from_millis(200)) {
            // The service is subscribed once it says online.
            Ok(Ok(Event::Incoming(Packet::Publish(p))))
                if p.topic.ends_with("status") && !sent && p.payload.windows(8).any(|w| w == b"\"online\"") =>
            {
                let body = serde_json::to_vec(&request).unwrap();
                client.publish(format!("{prefix}request"), QoS::AtLeastOnce, false, body).unwrap();
                sent = true;
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic.ends_with("status") => {}
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => answer = Some((p.topic.clone(), p.payload.to_vec())),
            _ => {}
        }
    }
    shutdown.store(true, Ordering::SeqCst);
    let (topic, payload) = answer.expect("an answer within 60 s");
    assert_eq!(topic, format!("{prefix}image/req-1"), "got {}", String::from_utf8_lossy(&payload));
    let img = image::load_from_memory(&payload).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (16, 16));
    // The service ran the same pipeline as a direct call with the request's seed and steps.
    let g = tiny();
    let info = g.info().clone();
    let limits = mcm_edge::frames::FrameLimits::default();
    let maps: Maps = [("segmentation", png(&seg)), ("sketch", png(&sketch)), ("depth", depth)]
        .into_iter()
        .map(|(n, b)| (n.to_string(), mcm_edge::frames::decode_frame(&b, info.modality(n).unwrap(), 16, &limits).unwrap()))
        .collect();
    let direct = g.generate(&maps, &GenerationParams { seed: 5, steps: 3, strength: 1.0, eta: 0.0, text: TextParams::default() }).unwrap();
    assert_eq!(img, direct);
    let without_depth: Maps = maps.into_iter().filter(|(n, _)| n != "depth").collect();
    let other = g.generate(&without_depth, &GenerationParams { seed: 5, steps: 3, strength: 1.0, eta: 0.0, text: TextParams::default() }).unwrap();
    assert_ne!(img, other, "the depth map reaches the MCM");
    service.join().unwrap().unwrap();
}

#[test]
fn bench_reports_the_operator_profile_and_onnxruntime_ratios() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let frame = std::fs::read(root.join("config/samples/segmentation/tablet-0.png")).unwrap();
    let plan = BenchPlan { steps: 2, runs: 2, profile: true, workers: vec![1, 2] };
    let mut report = bench(&root.join("models/tiny"), &frame, &plan, &[Backend::default()]).unwrap().remove(0);
    let profile = report.profile.as_ref().expect("asked for a profile");
    for ops in [&profile.base, &profile.mcm] {
        assert!(!ops.is_empty());
        assert!(ops.iter().all(|o| o.nodes > 0 && o.ms >= 0.0));
        assert!(ops.windows(2).all(|w| w[0].ms >= w[1].ms), "largest first");
        let matmul = ops.iter().find(|o| o.op == "OptMatMul").expect("a matrix product");
        assert!(!matmul.kernels.is_empty() && matmul.kernels.iter().all(|k| k.contains("mmm")), "{:?}", matmul.kernels);
        // torch's GroupNorm chains run as fused ops (runtime/group_norm.rs).
        let kinds: Vec<&str> = ops.iter().map(|o| o.op.as_str()).collect();
        assert!(kinds.iter().any(|k| k.starts_with("GroupNorm")), "{kinds:?}");
    }
    assert!(report.images_per_s > 0.0 && report.peak_rss_mib.is_some_and(|m| m > 1.0));
    let workers: Vec<usize> = report.throughput.iter().map(|t| t.workers).collect();
    assert_eq!(workers, [1, 2]);
    assert!(report.throughput.iter().all(|t| t.images_per_s > 0.0 && t.latency_ms > 0.0 && t.images_per_worker == 2));
    assert_eq!(report.throughput[0].speedup, 1.0);
    let none = BenchPlan { workers: vec![], ..plan };
    assert!(bench(&root.join("models/tiny"), &frame, &none, &[Backend::default()]).is_err(), "no worker count is refused");
    let ort = serde_json::json!({ "ms": { "base": { "1": report.base_step_ms / 2.0 }, "mcm": { "1": 1.0 } } });
    report.compare_ort(&ort).unwrap();
    let cmp = report.ort.as_ref().unwrap();
    assert!((cmp.base_ratio - 2.0).abs() < 1e-9);
    assert!(report.compare_ort(&serde_json::json!({})).is_err(), "a report without ms.base is refused");
}
