//! Broker and device faults against a real mosquitto started by the test (skipped, with a
//! message, when mosquitto is not installed): nothing accepted is lost, nothing answered twice.

mod support;

use std::collections::BTreeMap;

use support::*;

/// mosquitto that keeps sessions and queued messages across a restart (saved on SIGTERM).
fn persistent_mosquitto() -> Option<Mosquitto> {
    let m = Mosquitto::start_with(|port, dir| {
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 1\nlog_dest stderr\nlog_type all\n",
            dir.display()
        )
    });
    if m.is_none() {
        eprintln!("skipped: mosquitto is not installed");
    }
    m
}

/// Answers per request id (`image/<id>` or an error naming the id) among `msgs`.
fn answers_per_id(prefix: &str, msgs: &[Msg]) -> BTreeMap<String, Vec<String>> {
    let mut answers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, m) in msgs.iter().enumerate() {
        // A QoS 2 receiver drops the broker's redelivery (DUP) of a publish it already has;
        // rumqttc hands it on, so the test does it.
        if m.dup && msgs[..i].iter().any(|e| e.topic == m.topic && e.payload == m.payload) {
            continue;
        }
        if let Some(id) = m.topic.strip_prefix(&format!("{prefix}image/")) {
            answers.entry(id.to_string()).or_default().push("image".into());
        } else if m.topic == format!("{prefix}error")
            && let Some(id) = m.json()["id"].as_str()
        {
            answers.entry(id.to_string()).or_default().push(m.json()["code"].as_str().unwrap_or("?").to_string());
        }
    }
    answers
}

/// Collect messages until every id in `ids` has an answer or `wait` passed.
fn collect_answers(tc: &mut TestClient, prefix: &str, ids: &[String], wait: Duration) -> Vec<Msg> {
    let deadline = Instant::now() + wait;
    let mut msgs = Vec::new();
    while Instant::now() < deadline {
        msgs.extend(tc.drain(Duration::from_millis(500)));
        let answers = answers_per_id(prefix, &msgs);
        if ids.iter().all(|id| answers.contains_key(id)) {
            // Give late duplicates a chance to show up.
            msgs.extend(tc.drain(Duration::from_secs(1)));
            break;
        }
    }
    msgs
}

fn assert_each_answered_once(prefix: &str, ids: &[String], msgs: &[Msg]) {
    let answers = answers_per_id(prefix, msgs);
    let missing: Vec<&String> = ids.iter().filter(|id| !answers.contains_key(*id)).collect();
    let twice: Vec<(&String, &Vec<String>)> = answers.iter().filter(|(_, a)| a.len() > 1).collect();
    assert!(missing.is_empty(), "{} of {} requests unanswered: {missing:?}", missing.len(), ids.len());
    assert!(twice.is_empty(), "answered more than once: {twice:?}");
}

#[test]
fn broker_restart_mid_stream_loses_and_duplicates_nothing() {
    let Some(mut broker) = persistent_mosquitto() else { return };
    // QoS 2 end to end: exactly once needs it (QoS 1 allows protocol-level duplicates).
    let mut config = test_config(broker.port, MqttProtocol::V311);
    config.mqtt.qos = 2;
    config.limits.queue_depth = 64;
    let prefix = config.mqtt.topic_prefix();
    let client_id = format!("faults-client-{}", std::process::id());
    let mut tc = TestClient::connect_with(broker.port, MqttProtocol::V311, &client_id, false, 1);
    tc.subscribe(&format!("{prefix}#"));
    let svc = spawn_service(config, Duration::from_millis(30), &mut tc);

    let ids: Vec<String> = (0..40).map(|i| format!("req-{i}")).collect();
    let frame = b64(&seg_png());
    for (i, id) in ids.iter().enumerate() {
        if i == 15 {
            broker.stop();
            // Requests sent while the broker is down wait in the client and go out after it.
            std::thread::sleep(Duration::from_millis(300));
        }
        if i == 25 {
            std::thread::sleep(Duration::from_millis(1500));
            broker.restart();
        }
        tc.publish(&format!("{prefix}request"), request(id, json!({ "segmentation": frame })));
        std::thread::sleep(Duration::from_millis(40));
    }
    let msgs = collect_answers(&mut tc, &prefix, &ids, Duration::from_secs(60));
    if !ids.iter().all(|id| answers_per_id(&prefix, &msgs).contains_key(id)) {
        eprintln!("mosquitto log:\n{}", std::fs::read_to_string(broker.dir.join("mosquitto.log")).unwrap_or_default());
    }
    assert_each_answered_once(&prefix, &ids, &msgs);
    let images = answers_per_id(&prefix, &msgs).values().filter(|a| a[0] == "image").count();
    assert_eq!(images, ids.len(), "every request gets an image, none an error");
    let summary = svc.stop();
    assert_eq!(summary.requests_accepted, ids.len() as u64);
}

#[test]
fn oversized_message_is_dropped_and_the_device_stays_online() {
    // MQTT 3.1.1 cannot tell the broker the size limit: a persistent session would get the same
    // oversized message again on every reconnect, unless the device drops it (clean session once).
    let Some(broker) = persistent_mosquitto() else { return };
    let mut config = test_config(broker.port, MqttProtocol::V311);
    config.mqtt.max_packet_bytes = 64 * 1024;
    config.limits.max_payload_bytes = 48 * 1024;
    let (svc, mut tc) = start(config, Duration::ZERO, MqttProtocol::V311);
    let p = svc.prefix.clone();
    tc.publish(&format!("{p}frame/segmentation"), vec![0u8; 200 * 1024]);
    let err = tc.wait_for("message_too_large", |m| m.topic == format!("{p}error") && m.json()["code"] == "message_too_large");
    assert!(err.json()["message"].as_str().unwrap().contains("204"), "{}", err.json());
    // The device reconnects (clean session once, then persistent again) and says online.
    tc.wait_for("online after the reconnect", |m| m.topic == format!("{p}status") && m.json()["state"] == "online");
    tc.publish(&format!("{p}request"), request("after", json!({ "segmentation": b64(&seg_png()) })));
    tc.wait_for("image/after", |m| m.topic == format!("{p}image/after"));
    svc.stop();
}

// ------------------------------------------------------------------------------------------
// The real device binary, killed and restarted.

#[test]
fn device_crash_sends_the_last_will_and_the_restart_answers_what_was_missed() {
    let Some(broker) = persistent_mosquitto() else { return };
    let device_id = format!("crash{}", std::process::id());
    let prefix = format!("mcm/{device_id}/");
    let config = broker.dir.join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nport = {}\ndevice_id = \"{device_id}\"\nqos = 1\nreconnect_delay_ms = 100\n\
             [model]\ndir = \"models/tiny\"\n[generation]\nsteps = 2\n[limits]\nmax_steps = 1000\n",
            broker.port
        ),
    )
    .unwrap();
    let client_id = format!("crash-client-{}", std::process::id());
    let mut tc = TestClient::connect_with(broker.port, MqttProtocol::V311, &client_id, false, 1);
    tc.subscribe(&format!("{prefix}#"));
    let status = format!("{prefix}status");
    let state = |m: &Msg, s: &str| m.topic == status && m.json()["state"] == s;

    let mut device = Device::start(&config);
    tc.wait_for("online", |m| state(m, "online"));
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples/segmentation/tablet-0.png");
    let frame = b64(&std::fs::read(sample).unwrap());
    tc.publish(&format!("{prefix}request"), request("before", json!({ "segmentation": frame })));
    tc.wait_for("image/before", |m| m.topic == format!("{prefix}image/before"));

    // A long request: the device is killed while generating it, before it was answered.
    let long = serde_json::to_vec(&json!({ "id": "cut", "frames": { "segmentation": frame }, "steps": 1000 })).unwrap();
    tc.publish(&format!("{prefix}request"), long);
    tc.wait_for("busy", |m| state(m, "busy"));
    device.kill();
    tc.wait_for("offline (last will)", |m| state(m, "offline"));

    // Requests sent while the device is down are kept by the broker (persistent session).
    let down: Vec<String> = (0..3).map(|i| format!("down-{i}")).collect();
    for id in &down {
        tc.publish(&format!("{prefix}request"), request(id, json!({ "segmentation": frame })));
    }
    std::thread::sleep(Duration::from_millis(300));
    device.restart();
    tc.wait_for("online again", |m| state(m, "online"));
    let mut ids = down.clone();
    ids.push("cut".into());
    let msgs = collect_answers(&mut tc, &prefix, &ids, Duration::from_secs(60));
    assert_each_answered_once(&prefix, &ids, &msgs);
}

#[test]
fn control_characters_in_an_id_are_refused_and_the_device_stays_connected() {
    // mosquitto closes the connection of a client that publishes to a topic with control
    // characters: answering on image/<id> with such an id would cut the device off for good.
    let Some(broker) = persistent_mosquitto() else { return };
    let (svc, mut tc) = start(test_config(broker.port, MqttProtocol::V311), Duration::ZERO, MqttProtocol::V311);
    let p = svc.prefix.clone();
    let frame = b64(&seg_png());
    for id in ["nl\nx", "esc\u{1b}", "del\u{7f}", "nonchar\u{ffff}"] {
        tc.publish(&format!("{p}request"), request(id, json!({ "segmentation": frame })));
        let err = tc.wait_for("invalid_id", |m| m.topic == format!("{p}error") && m.json()["id"] == id);
        assert_eq!(err.json()["code"], "invalid_id");
    }
    tc.publish(&format!("{p}request"), request("after", json!({ "segmentation": frame })));
    tc.wait_for("image/after", |m| m.topic == format!("{p}image/after"));
    let offline = tc.drain(Duration::from_millis(300)).iter().any(|m| m.topic.ends_with("/status") && m.json()["state"] == "offline");
    assert!(!offline, "the device was disconnected");
    svc.stop();
}
