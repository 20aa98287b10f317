//! End to end: the MQTT service with a fake generator against the in-process broker (and
//! against mosquitto when it is installed).

mod support;

use support::*;
/// The core scenario, shared by rumqttd and mosquitto: request -> image/<id>, retained status,
/// stream frames -> image, clean shutdown -> offline status.
fn core_scenario(port: u16, protocol: MqttProtocol) {
    let (svc, mut tc) = start(test_config(port, protocol), Duration::ZERO, protocol);
    let p = svc.prefix.clone();

    // Request with both modalities, one of them > 10 KiB (rumqttc's default packet limit).
    let big = big_seg_png();
    let body = request("r1", json!({ "segmentation": b64(&big), "sketch": b64(&sketch_png()) }));
    assert!(body.len() > 10 * 1024);
    tc.publish(&format!("{p}request"), body);
    let img = tc.wait_for("image/r1", |m| m.topic == format!("{p}image/r1"));
    let img = decode_png(&img.payload);
    assert_eq!(img.dimensions(), (SIZE as u32, SIZE as u32));
    assert!(img.pixels().any(|px| px.0 == [0, 0, 0]), "the sketch strokes are painted");
    assert!(img.pixels().any(|px| PALETTE.contains(&px.0)), "the classes are painted");

    // A request with a segmentation only: left half grass, right half water.
    tc.publish(&format!("{p}request"), request("r2", json!({ "segmentation": b64(&seg_png()) })));
    let img = decode_png(&tc.wait_for("image/r2", |m| m.topic == format!("{p}image/r2")).payload);
    assert_eq!(img.get_pixel(2, 5).0, PALETTE[1]);
    assert_eq!(img.get_pixel(SIZE as u32 - 3, 5).0, PALETTE[2]);

    // Retained status, seen by a client that subscribes later.
    let mut late = TestClient::connect(port, protocol);
    late.subscribe(&format!("{p}status"));
    let status = late.wait_for("retained status", |m| m.topic == format!("{p}status"));
    assert!(status.retain, "the status is retained");
    let s = status.json();
    assert!(matches!(s["state"].as_str(), Some("online" | "busy")), "{s}");
    assert_eq!(s["modalities"][0]["name"], "segmentation");
    assert_eq!(s["modalities"][1]["name"], "sketch");
    assert_eq!(s["model"]["image_size"], SIZE);
    assert_eq!(s["queue_capacity"], 8);
    assert!(s["last_latency_ms"].is_u64(), "{s}");

    // Stream: a segmentation frame (> 10 KiB), then a sketch frame; both latest maps are used.
    tc.publish(&format!("{p}frame/segmentation"), seg_png());
    let img = decode_png(&tc.wait_for("stream image", |m| m.topic == format!("{p}image")).payload);
    assert_eq!(img.get_pixel(2, 5).0, PALETTE[1]);
    assert!(!img.pixels().any(|px| px.0 == [0, 0, 0]));
    tc.publish(&format!("{p}frame/sketch"), sketch_png());
    let img = decode_png(&tc.wait_for("stream image 2", |m| m.topic == format!("{p}image")).payload);
    assert_eq!(img.get_pixel(2, 5).0, PALETTE[1], "the segmentation is kept");
    assert!(img.pixels().any(|px| px.0 == [0, 0, 0]), "the sketch is added");
    tc.publish(&format!("{p}frame/segmentation"), big);
    let img = decode_png(&tc.wait_for("stream image 3", |m| m.topic == format!("{p}image")).payload);
    assert_eq!(img.dimensions(), (SIZE as u32, SIZE as u32));

    let summary = svc.stop();
    assert_eq!(summary.images_generated, 5, "{summary:?}");
    assert_eq!(summary.errors, 0, "{summary:?}");
    assert_eq!(summary.requests_accepted, 2, "{summary:?}");
    let offline = tc.wait_for("offline status", |m| m.topic == format!("{p}status") && m.json()["state"] == "offline");
    assert_eq!(offline.json(), json!({"state": "offline"}));
}

// ------------------------------------------------------------------------------------------
// Tests.

#[test]
fn core_v311_on_rumqttd() {
    core_scenario(rumqttd().port, MqttProtocol::V311);
}

#[test]
fn core_v5_on_rumqttd() {
    core_scenario(rumqttd().v5_port, MqttProtocol::V5);
}

#[test]
fn core_on_mosquitto() {
    let Some(mosquitto) = start_mosquitto() else {
        println!("note: mosquitto is not installed; skipping the mosquitto test (apt-get install mosquitto)");
        return;
    };
    core_scenario(mosquitto.port, MqttProtocol::V311);
    core_scenario(mosquitto.port, MqttProtocol::V5);
}

#[test]
fn bad_requests_get_errors_with_id_and_code() {
    let (svc, mut tc) = start(test_config(rumqttd().port, MqttProtocol::V311), Duration::ZERO, MqttProtocol::V311);
    let p = svc.prefix.clone();
    let error_topic = format!("{p}error");
    let long_id = "x".repeat(129);
    let seg = b64(&seg_png());
    let cases: Vec<(Vec<u8>, Value, &str)> = vec![
        (b"not json {".to_vec(), Value::Null, "invalid_json"),
        (b"[1, 2]".to_vec(), Value::Null, "invalid_request"),
        (request("b64", json!({ "segmentation": "!!not base64!!" })), json!("b64"), "invalid_base64"),
        (request("unk", json!({ "depth": seg })), json!("unk"), "unknown_modality"),
        (request("empty", json!({})), json!("empty"), "no_frames"),
        (request(&long_id, json!({ "segmentation": seg })), json!(long_id), "invalid_id"),
        (request("", json!({ "segmentation": seg })), json!(""), "invalid_id"),
        (request("a/b", json!({ "segmentation": seg })), json!("a/b"), "invalid_id"),
        (
            serde_json::to_vec(&json!({ "id": "extra", "frames": { "segmentation": seg }, "colour": 1 })).unwrap(),
            json!("extra"),
            "invalid_request",
        ),
        (serde_json::to_vec(&json!({ "frames": { "segmentation": seg } })).unwrap(), Value::Null, "invalid_request"),
        (
            serde_json::to_vec(&json!({ "id": "steps", "frames": { "segmentation": seg }, "steps": 0 })).unwrap(),
            json!("steps"),
            "invalid_steps",
        ),
        (
            serde_json::to_vec(&json!({ "id": "strength", "frames": { "segmentation": seg }, "strength": -1.0 })).unwrap(),
            json!("strength"),
            "invalid_strength",
        ),
        (request("junk", json!({ "segmentation": b64(b"definitely not an image") })), json!("junk"), "not_an_image"),
    ];
    for (payload, id, code) in &cases {
        tc.publish(&format!("{p}request"), payload.clone());
        let e = tc.wait_for(&format!("error {code} for {id}"), |m| m.topic == error_topic).json();
        assert_eq!(&e["id"], id, "{e}");
        assert_eq!(e["code"], *code, "{e}");
        assert!(e["message"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
    }
    // Frame errors: unknown modality and an undecodable frame, id null.
    tc.publish(&format!("{p}frame/depth"), seg_png());
    let e = tc.wait_for("frame error", |m| m.topic == error_topic).json();
    assert_eq!((e["id"].clone(), e["code"].clone()), (Value::Null, json!("unknown_modality")), "{e}");
    tc.publish(&format!("{p}frame/sketch"), b"garbage".to_vec());
    let e = tc.wait_for("frame decode error", |m| m.topic == error_topic).json();
    assert_eq!(e["id"], Value::Null, "{e}");
    assert_eq!(e["code"], "not_an_image", "{e}");

    // Nothing else was answered, and no image was generated.
    let rest = tc.drain(Duration::from_millis(300));
    assert!(rest.iter().all(|m| !m.topic.starts_with(&format!("{p}image"))), "unexpected image");
    assert_eq!(svc.generator.calls.load(Ordering::SeqCst), 0);
    let summary = svc.stop();
    assert_eq!(summary.errors, cases.len() as u64 + 2, "{summary:?}");
}

#[test]
fn mqtt5_response_topic_and_correlation_data() {
    let (svc, mut tc) = start(test_config(rumqttd().v5_port, MqttProtocol::V5), Duration::ZERO, MqttProtocol::V5);
    let p = svc.prefix.clone();
    let reply_topic = format!("reply/{}", svc.prefix.trim_end_matches('/').replace('/', "-"));
    tc.subscribe(&reply_topic);

    tc.publish_v5_request(&format!("{p}request"), request("v5", json!({ "segmentation": b64(&big_seg_png()) })), &reply_topic, b"corr-1");
    let reply = tc.wait_for("reply image", |m| m.topic == reply_topic);
    assert_eq!(reply.correlation.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(reply.content_type.as_deref(), Some("image/png"));
    assert_eq!(decode_png(&reply.payload).dimensions(), (SIZE as u32, SIZE as u32));
    let img = tc.wait_for("image/v5", |m| m.topic == format!("{p}image/v5"));
    assert_eq!(img.payload, reply.payload);

    // Errors go to the response topic too, with the correlation data.
    tc.publish_v5_request(&format!("{p}request"), request("v5-bad", json!({})), &reply_topic, &[0, 1, 2, 255]);
    let reply = tc.wait_for("reply error", |m| m.topic == reply_topic);
    assert_eq!(reply.correlation.as_deref(), Some(&[0u8, 1, 2, 255][..]));
    assert_eq!(reply.content_type.as_deref(), Some("application/json"));
    assert_eq!(reply.json()["code"], "no_frames");
    assert_eq!(reply.json()["id"], "v5-bad");
    svc.stop();
}

#[test]
fn v311_client_talks_to_mqtt5_service() {
    // The in-process broker shares one router between its 3.1.1 and 5 listeners.
    let broker = rumqttd();
    let config = test_config(broker.v5_port, MqttProtocol::V5);
    let prefix = config.mqtt.topic_prefix();
    let mut tc = TestClient::connect(broker.port, MqttProtocol::V311);
    tc.subscribe(&format!("{prefix}#"));
    let generator = FakeGenerator::new(Duration::ZERO);
    let shutdown = Arc::new(AtomicBool::new(false));
    let handle = {
        let generator: Arc<dyn ImageGenerator> = generator.clone();
        let shutdown = Arc::clone(&shutdown);
        std::thread::spawn(move || service::run(&config, generator, shutdown))
    };
    tc.wait_for("online", |m| m.topic == format!("{prefix}status") && m.json()["state"] == "online");
    tc.publish(&format!("{prefix}request"), request("mixed", json!({ "sketch": b64(&sketch_png()) })));
    let img = decode_png(&tc.wait_for("image", |m| m.topic == format!("{prefix}image/mixed")).payload);
    assert_eq!(img.get_pixel(0, 0).0, NO_SEGMENTATION);
    shutdown.store(true, Ordering::SeqCst);
    handle.join().unwrap().unwrap();
}

#[test]
fn burst_larger_than_the_queue_gets_one_answer_per_id() {
    let mut config = test_config(rumqttd().port, MqttProtocol::V311);
    config.limits.queue_depth = 2;
    let (svc, mut tc) = start(config, Duration::from_millis(150), MqttProtocol::V311);
    let p = svc.prefix.clone();
    let n = 10;
    let seg = b64(&seg_png());
    for i in 0..n {
        tc.publish(&format!("{p}request"), request(&format!("burst-{i}"), json!({ "segmentation": seg })));
    }
    let mut answers: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let deadline = Instant::now() + WAIT;
    while answers.len() < n && Instant::now() < deadline {
        let Some(m) = tc.try_wait_for(Duration::from_millis(200), &|m: &Msg| {
            m.topic.starts_with(&format!("{p}image/")) || m.topic == format!("{p}error")
        }) else {
            continue;
        };
        let (id, kind) = match m.topic.strip_prefix(&format!("{p}image/")) {
            Some(id) => (id.to_string(), "image".to_string()),
            None => {
                let e = m.json();
                (e["id"].as_str().unwrap().to_string(), e["code"].as_str().unwrap().to_string())
            }
        };
        answers.entry(id).or_default().push(kind);
    }
    // Give duplicates a chance to show up.
    for m in tc.drain(Duration::from_millis(800)) {
        if let Some(id) = m.topic.strip_prefix(&format!("{p}image/")) {
            answers.entry(id.to_string()).or_default().push("image".into());
        } else if m.topic == format!("{p}error") {
            answers.entry(m.json()["id"].as_str().unwrap().to_string()).or_default().push("error".into());
        }
    }
    assert_eq!(answers.len(), n, "{answers:?}");
    for (id, a) in &answers {
        assert_eq!(a.len(), 1, "{id}: {a:?}");
        assert!(a[0] == "image" || a[0] == "queue_full", "{id}: {a:?}");
    }
    let images = answers.values().filter(|a| a[0] == "image").count();
    let full = answers.values().filter(|a| a[0] == "queue_full").count();
    assert!(images >= 2, "a full queue at least: {answers:?}");
    assert!(full >= 1, "{answers:?}");
    let summary = svc.stop();
    assert_eq!(summary.images_generated as usize, images);
    assert_eq!(summary.requests_accepted as usize, images);
}

#[test]
fn retries_get_the_same_answer_and_pending_duplicates_none() {
    let (svc, mut tc) = start(test_config(rumqttd().port, MqttProtocol::V311), Duration::from_millis(100), MqttProtocol::V311);
    let p = svc.prefix.clone();
    let body = request("dup", json!({ "segmentation": b64(&seg_png()) }));
    // A duplicate of a pending id: no second answer.
    tc.publish(&format!("{p}request"), body.clone());
    tc.publish(&format!("{p}request"), body.clone());
    let first = tc.wait_for("image/dup", |m| m.topic == format!("{p}image/dup")).payload;
    let answers = |msgs: &[Msg]| -> Vec<Msg> {
        msgs.iter().filter(|m| m.topic.starts_with(&format!("{p}image")) || m.topic.ends_with("error")).cloned().collect()
    };
    assert!(answers(&tc.drain(Duration::from_millis(500))).is_empty(), "a pending duplicate was answered twice");
    // A retry after the answer: the same image again, not generated again.
    tc.publish(&format!("{p}request"), body);
    let again = tc.wait_for("image/dup again", |m| m.topic == format!("{p}image/dup")).payload;
    assert_eq!(again, first);
    // An error answer (an inference failure after acceptance) is replayed too.
    let failing = serde_json::to_vec(&json!({"id": "fails", "frames": {"segmentation": b64(&seg_png())}, "strength": FAILING_STRENGTH})).unwrap();
    tc.publish(&format!("{p}request"), failing.clone());
    let error = tc.wait_for("error of fails", |m| m.topic == format!("{p}error")).json();
    assert_eq!((error["id"].as_str(), error["code"].as_str()), (Some("fails"), Some("inference_failed")), "{error}");
    tc.publish(&format!("{p}request"), failing);
    assert_eq!(tc.wait_for("error of fails again", |m| m.topic == format!("{p}error")).json(), error);
    let status = tc.wait_for("status with replays", |m| m.topic == format!("{p}status") && m.json()["replays"] == 2).json();
    assert!(status["answer_cache_bytes"].as_u64().unwrap() > first.len() as u64, "{status}");
    assert!(answers(&tc.drain(Duration::from_millis(500))).is_empty(), "one answer per retry");
    assert_eq!(svc.generator.calls.load(Ordering::SeqCst), 2, "replays are not generated");
    let summary = svc.stop();
    assert_eq!((summary.images_generated, summary.requests_accepted), (1, 2), "{summary:?}");
    assert_eq!((summary.duplicates_ignored, summary.replays), (1, 2), "{summary:?}");
}

#[test]
fn an_evicted_answer_is_generated_again() {
    let mut config = test_config(rumqttd().port, MqttProtocol::V311);
    config.limits.answer_cache_bytes = 0;
    let (svc, mut tc) = start(config, Duration::ZERO, MqttProtocol::V311);
    let p = svc.prefix.clone();
    let body = request("again", json!({ "segmentation": b64(&seg_png()) }));
    for n in 1..=2 {
        tc.publish(&format!("{p}request"), body.clone());
        tc.wait_for(&format!("image/again #{n}"), |m| m.topic == format!("{p}image/again"));
    }
    let summary = svc.stop();
    assert_eq!((summary.images_generated, summary.replays), (2, 0), "{summary:?}");
}

#[test]
fn latest_frame_wins_while_busy() {
    let (svc, mut tc) = start(test_config(rumqttd().port, MqttProtocol::V311), Duration::from_millis(600), MqttProtocol::V311);
    let p = svc.prefix.clone();
    // The first frame starts a job; while it runs, three more arrive: two are replaced.
    tc.publish(&format!("{p}frame/segmentation"), seg_png());
    std::thread::sleep(Duration::from_millis(100));
    let water = png(&RgbImage::from_pixel(40, 40, Rgb(PALETTE[2])));
    let rock = png(&RgbImage::from_pixel(40, 40, Rgb(PALETTE[3])));
    tc.publish(&format!("{p}frame/segmentation"), water.clone());
    tc.publish(&format!("{p}frame/segmentation"), water);
    tc.publish(&format!("{p}frame/segmentation"), rock);
    let first = decode_png(&tc.wait_for("image 1", |m| m.topic == format!("{p}image")).payload);
    assert_eq!(first.get_pixel(2, 2).0, PALETTE[1]);
    let second = decode_png(&tc.wait_for("image 2", |m| m.topic == format!("{p}image")).payload);
    assert_eq!(second.get_pixel(2, 2).0, PALETTE[3], "the latest frame wins");
    let rest = tc.drain(Duration::from_millis(900));
    assert!(rest.iter().all(|m| m.topic != format!("{p}image")), "only two images");
    let status = rest.iter().rev().find(|m| m.topic == format!("{p}status")).expect("a status").json();
    assert_eq!(status["dropped_frames"], 2, "{status}");
    assert_eq!(status["state"], "online", "{status}");
    let summary = svc.stop();
    assert_eq!(summary.dropped_frames, 2);
    assert_eq!(summary.images_generated, 2);
}

#[test]
fn two_workers_generate_at_once_and_answer_each_request_once() {
    let mut config = test_config(rumqttd().port, MqttProtocol::V311);
    config.runtime.workers = 2;
    config.limits.queue_depth = 8;
    let (svc, mut tc) = start(config, Duration::from_millis(150), MqttProtocol::V311);
    let p = svc.prefix.clone();
    let seg = b64(&seg_png());
    // The first request is slow: the ones after it finish first, and their acks (QoS 1) wait for
    // its ack (rumqttd drops a connection that acknowledges out of order).
    let slow = serde_json::to_vec(&json!({ "id": "w-slow", "frames": { "segmentation": seg }, "seed": SLOW_SEED })).unwrap();
    tc.publish(&format!("{p}request"), slow);
    let ids: Vec<String> = (0..5).map(|i| format!("w{i}")).collect();
    for id in &ids {
        tc.publish(&format!("{p}request"), request(id, json!({ "segmentation": seg })));
    }
    // A stream frame meanwhile: it runs beside the requests.
    tc.publish(&format!("{p}frame/segmentation"), seg_png());
    let mut order = Vec::new();
    let mut stream_images = 0;
    let mut most_running = 0;
    let watched = |m: &Msg| m.topic.starts_with(&format!("{p}image")) || m.topic == format!("{p}error") || m.topic == format!("{p}status");
    let deadline = Instant::now() + WAIT;
    while order.len() < ids.len() + 1 && Instant::now() < deadline {
        let Some(m) = tc.try_wait_for(Duration::from_millis(200), &watched) else {
            continue;
        };
        match m.topic.strip_prefix(&format!("{p}image/")) {
            Some(id) => order.push(id.to_string()),
            None if m.topic == format!("{p}image") => stream_images += 1,
            None if m.topic == format!("{p}status") => {
                let status = m.json();
                assert_eq!(status["workers"], 2, "{status}");
                most_running = most_running.max(status["running"].as_u64().expect("running in the status"));
            }
            None => panic!("an error: {}", m.json()),
        }
    }
    assert_eq!(order.len(), ids.len() + 1, "every request answered: {order:?}");
    assert_ne!(order[0], "w-slow", "the slow request finished after others: {order:?}");
    assert_eq!(most_running, 2, "the status showed both workers generating");
    // Still connected and answering: a request after the out-of-order finishes.
    tc.publish(&format!("{p}request"), request("after", json!({ "segmentation": seg })));
    tc.wait_for("image/after", |m| m.topic == format!("{p}image/after"));
    let rest = tc.drain(Duration::from_millis(600));
    stream_images += rest.iter().filter(|m| m.topic == format!("{p}image")).count();
    assert!(rest.iter().all(|m| !m.topic.starts_with(&format!("{p}image/"))), "one answer per request");
    assert_eq!(stream_images, 1, "the stream frame gave one image");
    assert_eq!(svc.generator.max_active.load(Ordering::SeqCst), 2, "two generations ran at once, never more");
    let summary = svc.stop();
    assert_eq!((summary.images_generated, summary.requests_accepted), (8, 7), "{summary:?}");
}

#[test]
fn queued_requests_are_answered_on_shutdown() {
    let mut config = test_config(rumqttd().port, MqttProtocol::V311);
    config.limits.queue_depth = 4;
    let (svc, mut tc) = start(config, Duration::from_millis(400), MqttProtocol::V311);
    let p = svc.prefix.clone();
    let seg = b64(&seg_png());
    for i in 0..3 {
        tc.publish(&format!("{p}request"), request(&format!("s{i}"), json!({ "segmentation": seg })));
    }
    // Wait until the first job runs (and the others are queued), then stop: it finishes, the
    // others get shutting_down.
    tc.wait_for("busy", |m| m.topic == format!("{p}status") && m.json()["state"] == "busy");
    std::thread::sleep(Duration::from_millis(150));
    let summary = svc.stop();
    assert_eq!(summary.images_generated, 1, "{summary:?}");
    tc.wait_for("image/s0", |m| m.topic == format!("{p}image/s0"));
    for id in ["s1", "s2"] {
        let e = tc.wait_for(id, |m| m.topic == format!("{p}error") && m.json()["id"] == id).json();
        assert_eq!(e["code"], "shutting_down");
    }
    tc.wait_for("offline", |m| m.topic == format!("{p}status") && m.json()["state"] == "offline");
}

#[test]
fn service_waits_for_a_broker_that_starts_later() {
    // Nothing listens on the port yet: the service keeps retrying, then connects.
    let port = free_port();
    let config = test_config(port, MqttProtocol::V311);
    let prefix = config.mqtt.topic_prefix();
    let generator: Arc<dyn ImageGenerator> = FakeGenerator::new(Duration::ZERO);
    let shutdown = Arc::new(AtomicBool::new(false));
    let handle = {
        let shutdown = Arc::clone(&shutdown);
        std::thread::spawn(move || service::run(&config, generator, shutdown))
    };
    std::thread::sleep(Duration::from_millis(500));
    let b = broker::start(&broker::BrokerSpec { port, v5_port: 0, ws: None, max_packet_bytes: 16 << 20 }).expect("broker on the chosen port");
    let mut tc = TestClient::connect(b.port, MqttProtocol::V311);
    tc.subscribe(&format!("{prefix}status"));
    tc.wait_for("online", |m| m.topic == format!("{prefix}status") && m.json()["state"] == "online");
    shutdown.store(true, Ordering::SeqCst);
    handle.join().unwrap().unwrap();
}

#[test]
fn shutdown_without_a_broker_returns() {
    let config = test_config(free_port(), MqttProtocol::V5);
    let generator: Arc<dyn ImageGenerator> = FakeGenerator::new(Duration::ZERO);
    let shutdown = Arc::new(AtomicBool::new(false));
    let handle = {
        let shutdown = Arc::clone(&shutdown);
        std::thread::spawn(move || service::run(&config, generator, shutdown))
    };
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    shutdown.store(true, Ordering::SeqCst);
    let summary = handle.join().unwrap().unwrap();
    assert_eq!(summary, ServiceSummary::default());
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
}

/// rumqttc pitfall: after a reconnect with a clean session the subscriptions are gone. The broker
/// publishes the last will (offline), the service reconnects, subscribes again and says online.
#[test]
fn reconnect_renews_subscriptions_and_status() {
    for clean_session in [true, false] {
        let broker = rumqttd();
        let proxy = Proxy::start(broker.port);
        let mut config = test_config(proxy.port, MqttProtocol::V311);
        config.mqtt.clean_session = clean_session;
        config.mqtt.keep_alive_s = 5;
        let prefix = config.mqtt.topic_prefix();
        let status = format!("{prefix}status");
        let mut tc = TestClient::connect(broker.port, MqttProtocol::V311);
        tc.subscribe(&format!("{prefix}#"));
        let generator: Arc<dyn ImageGenerator> = FakeGenerator::new(Duration::ZERO);
        let shutdown = Arc::new(AtomicBool::new(false));
        let handle = {
            let shutdown = Arc::clone(&shutdown);
            std::thread::spawn(move || service::run(&config, generator, shutdown))
        };
        tc.wait_for("online", |m| m.topic == status && m.json()["state"] == "online");

        proxy.cut();
        let will = tc.wait_for("last will", |m| m.topic == status && m.json()["state"] == "offline");
        assert_eq!(will.json(), json!({"state": "offline"}));
        tc.wait_for("online again", |m| m.topic == status && m.json()["state"] == "online");

        let body = request("after-reconnect", json!({ "segmentation": b64(&big_seg_png()) }));
        tc.publish(&format!("{prefix}request"), body);
        tc.wait_for("image after reconnect", |m| m.topic == format!("{prefix}image/after-reconnect"));
        shutdown.store(true, Ordering::SeqCst);
        handle.join().unwrap().unwrap();
    }
}

#[test]
fn status_display_shows_the_last_input_and_output() {
    use mcm_edge::config::DisplayConfig;
    use mcm_edge::display::panel_layout;
    let dir = std::env::temp_dir().join(format!("mcm-edge-panel-{}", std::process::id()));
    let preview = dir.join("status.png");
    let mut config = test_config(rumqttd().port, MqttProtocol::V311);
    config.display = DisplayConfig { enabled: true, preview_png: Some(preview.clone()), refresh_ms: 0, ..DisplayConfig::default() };
    let (svc, mut tc) = start(config, Duration::ZERO, MqttProtocol::V311);
    let p = svc.prefix.clone();
    tc.publish(&format!("{p}request"), request("panel", json!({ "segmentation": b64(&seg_png()) })));
    tc.wait_for("image/panel", |m| m.topic == format!("{p}image/panel"));
    svc.stop(); // draws the last frame at once, with the broker offline

    let panel = image::open(&preview).expect("the preview PNG").to_rgb8();
    assert_eq!(panel.dimensions(), (320, 240));
    let layout = panel_layout(320, 240);
    for tile in [layout.input, layout.output] {
        // The map and the fake output are grass on the left half, water on the right half.
        let (x, y, w, h) = (tile.top_left.x as u32, tile.top_left.y as u32, tile.size.width, tile.size.height);
        assert_eq!(panel.get_pixel(x + w / 4, y + h / 2).0, PALETTE[1], "{tile:?}");
        assert_eq!(panel.get_pixel(x + 3 * w / 4, y + h / 2).0, PALETTE[2], "{tile:?}");
    }
    let header = layout.header;
    let reddish = (header.top_left.x..header.top_left.x + header.size.width as i32)
        .flat_map(|x| (header.top_left.y..header.top_left.y + header.size.height as i32).map(move |y| (x as u32, y as u32)))
        .filter(|&(x, y)| {
            let [r, g, b] = panel.get_pixel(x, y).0;
            r > 150 && g < 100 && b < 100
        })
        .count();
    assert!(reddish > 20, "the offline badge is red ({reddish} red pixels in the header)");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Keys of Home Assistant's MQTT image platform, as documented at
/// <https://www.home-assistant.io/integrations/image.mqtt/> (configuration variables), plus the
/// discovery-only `origin` (<https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery>).
const HA_IMAGE_KEYS: [&str; 24] = [
    "availability", "availability_mode", "availability_template", "availability_topic", "content_type", "device",
    "enabled_by_default", "encoding", "entity_category", "entity_picture", "icon", "image_encoding", "image_topic",
    "json_attributes_template", "json_attributes_topic", "name", "object_id", "default_entity_id", "payload_available",
    "payload_not_available", "unique_id", "url_template", "url_topic", "origin",
];
/// Keys of the `device` block (same page, "device").
const HA_DEVICE_KEYS: [&str; 12] = [
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model", "model_id", "name",
    "serial_number", "suggested_area", "sw_version", "via_device",
];

#[test]
fn home_assistant_discovery_is_retained_and_renewed_on_its_birth() {
    let port = rumqttd().port;
    let mut config = test_config(port, MqttProtocol::V311);
    config.home_assistant.enabled = true;
    config.home_assistant.discovery_prefix = format!("ha{}", DEVICE_COUNTER.fetch_add(1, Ordering::SeqCst));
    config.web.public_url = Some("http://tablet.local:8080/".into());
    let ha = config.home_assistant.discovery_prefix.clone();
    let node = config.mqtt.device_id.clone();
    let mut watcher = TestClient::connect(port, MqttProtocol::V311);
    watcher.subscribe(&format!("{ha}/#"));
    let (svc, mut tc) = start(config, Duration::ZERO, MqttProtocol::V311);
    let p = svc.prefix.clone();
    let topic = format!("{ha}/image/{node}/image/config");
    let first = watcher.wait_for("discovery", |m| m.topic == topic);
    let d = first.json();
    // Only documented keys, with the values the entity needs.
    for key in d.as_object().unwrap().keys() {
        assert!(HA_IMAGE_KEYS.contains(&key.as_str()), "undocumented key {key:?} in {d}");
    }
    for key in d["device"].as_object().unwrap().keys() {
        assert!(HA_DEVICE_KEYS.contains(&key.as_str()), "undocumented device key {key:?} in {d}");
    }
    assert_eq!(d["image_topic"], format!("{p}image"));
    assert_eq!(d["content_type"], "image/png");
    assert_eq!(d["availability_topic"], format!("{p}status"));
    assert!(d["availability_template"].as_str().unwrap().contains("value_json.state"), "{d}");
    assert_eq!((d["payload_available"].as_str(), d["payload_not_available"].as_str()), (Some("online"), Some("offline")));
    assert_eq!(d["device"]["configuration_url"], "http://tablet.local:8080/");
    assert!(d["unique_id"].as_str().unwrap().contains(&node) && d["device"]["identifiers"][0].is_string(), "{d}");
    // Retained: a client that subscribes later gets it.
    let mut late = TestClient::connect(port, MqttProtocol::V311);
    late.subscribe(&topic);
    assert!(late.wait_for("retained discovery", |m| m.topic == topic).retain);
    // Home Assistant's birth message brings it again.
    tc.publish(&format!("{ha}/status"), b"online".to_vec());
    let again = watcher.wait_for("discovery after the birth message", |m| m.topic == topic);
    assert_eq!(again.json(), d);
    // The entity's image: a stream frame's answer on P/image.
    tc.publish(&format!("{p}frame/segmentation"), seg_png());
    let img = tc.wait_for("stream image", |m| m.topic == d["image_topic"].as_str().unwrap());
    assert_eq!(&img.payload[..4], b"\x89PNG");
    svc.stop();
}
