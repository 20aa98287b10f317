//! TLS (rustls) and credentials against a real mosquitto with a TLS listener and a CA made by the
//! test with openssl (skipped, with a message, when mosquitto or openssl is missing). The device
//! is the real binary on models/tiny; the test client uses a plain listener of the same broker.

mod support;

use support::*;

const PASSWORD: &str = "pw-Zq81-never-logged";

/// Run a command in `dir`, panicking with its stderr when it fails.
fn sh(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).current_dir(dir).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, signed by it.
fn make_pki(dir: &Path, ca: &str) {
    let subj = format!("/CN={ca}");
    sh(dir, "openssl", &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subj, "-keyout", &format!("{ca}.key"), "-out", &format!("{ca}.pem")]);
    for (name, ext) in [("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")] {
        sh(dir, "openssl", &["req", "-newkey", "rsa:2048", "-nodes", "-subj", &format!("/CN={name}"), "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr")]);
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        sh(dir, "openssl", &["x509", "-req", "-in", &format!("{name}.csr"), "-CA", &format!("{ca}.pem"), "-CAkey", &format!("{ca}.key"), "-CAcreateserial", "-days", "2", "-extfile", &format!("{name}.ext"), "-out", &format!("{name}.pem")]);
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        // mosquitto drops to its own user when started as root: it must read these.
        std::fs::set_permissions(entry.unwrap().path(), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
}

/// mosquitto with a plain listener (returned port, for the test client) and a TLS listener that
/// requires a client certificate and a password (second port).
fn tls_mosquitto() -> Option<(Mosquitto, u16)> {
    let have = |p: &str| Command::new(p).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if find_mosquitto().is_none() || !have("openssl") || !have("mosquitto_passwd") {
        eprintln!("skipped: mosquitto, mosquitto_passwd or openssl is not installed");
        return None;
    }
    let tls_port = free_port();
    let broker = Mosquitto::start_with(|port, dir| {
        make_pki(dir, "ca");
        sh(dir, "mosquitto_passwd", &["-b", "-c", "passwd", "edge-1", PASSWORD]);
        std::fs::set_permissions(dir.join("passwd"), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let d = dir.display();
        format!(
            "per_listener_settings true\n\
             listener {port} 127.0.0.1\nallow_anonymous true\n\
             listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\npassword_file {d}/passwd\nallow_anonymous false\n"
        )
    })?;
    Some((broker, tls_port))
}

/// An edge.toml for the device on the TLS listener; `extra` is appended to `[mqtt.tls]`.
fn device_config(broker: &Mosquitto, tls_port: u16, name: &str, password_file: &Path, tls: &str) -> PathBuf {
    let path = broker.dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[mqtt]\nurl = \"mqtts://127.0.0.1:{tls_port}\"\ndevice_id = \"{name}\"\nusername = \"edge-1\"\n\
             password_file = \"{}\"\nreconnect_delay_ms = 200\n[mqtt.tls]\n{tls}\n\
             [model]\ndir = \"models/tiny\"\n[generation]\nsteps = 2\n",
            password_file.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn tls_with_client_certificate_and_password_file() {
    let Some((broker, tls_port)) = tls_mosquitto() else { return };
    let d = broker.dir.clone();
    let pw = d.join("device-password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let tls = format!("ca_file = \"{0}/ca.pem\"\nclient_cert_file = \"{0}/client.pem\"\nclient_key_file = \"{0}/client.key\"", d.display());

    let mut tc = TestClient::connect(broker.port, MqttProtocol::V311);
    tc.subscribe("mcm/#");
    let good = Device::start(&device_config(&broker, tls_port, "tls-good", &pw, &tls));
    tc.wait_for("online over TLS", |m| m.topic == "mcm/tls-good/status" && m.json()["state"] == "online");
    let frame = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples/segmentation/tablet-0.png")).unwrap();
    tc.publish("mcm/tls-good/request", request("t1", json!({ "segmentation": b64(&frame) })));
    let img = tc.wait_for("image/t1", |m| m.topic == "mcm/tls-good/image/t1");
    assert_eq!(decode_png(&img.payload).dimensions(), (16, 16));
    assert!(good.log().contains("TLS"), "the device says it uses TLS:\n{}", good.log());

    // A wrong password, or a CA that did not sign the broker's certificate: never online.
    let bad_pw = d.join("bad-password");
    std::fs::write(&bad_pw, "wrong\n").unwrap();
    make_pki(&std::fs::create_dir_all(d.join("other")).map(|_| d.join("other")).unwrap(), "other-ca");
    let wrong_ca = tls.replace(&format!("{}/ca.pem", d.display()), &format!("{}/other/other-ca.pem", d.display()));
    let bad = [
        Device::start(&device_config(&broker, tls_port, "tls-badpw", &bad_pw, &tls)),
        Device::start(&device_config(&broker, tls_port, "tls-badca", &pw, &wrong_ca)),
    ];
    let online = |m: &Msg| m.topic.ends_with("/status") && !m.topic.starts_with("mcm/tls-good/") && m.json()["state"] == "online";
    assert!(tc.try_wait_for(Duration::from_secs(4), &online).is_none(), "a device with bad credentials got online");
    let (badpw, badca) = (bad[0].log(), bad[1].log());
    assert!(badpw.to_lowercase().contains("refused") || badpw.contains("NotAuthorized") || badpw.contains("BadUserNamePassword"), "{badpw}");
    assert!(badca.contains("certificate") || badca.contains("UnknownIssuer"), "{badca}");

    // The password is read and used, never written to a log (debug level).
    for log in [good.log(), badpw, badca] {
        assert!(!log.contains(PASSWORD), "the password leaked into a log");
    }
}
