//! The optional onnxruntime backend (cargo feature `onnxruntime`).
//!
//! With the feature, the library comes from `ORT_DYLIB_PATH` (scripts/test.sh points it at the
//! venv's onnxruntime): without it these tests fail, they do not skip. They check that
//! onnxruntime and tract agree on the same inputs (models/tiny and models/default, every net),
//! that onnxruntime reproduces the exporter's PyTorch test vectors, that `[runtime]`, `--backend`
//! and `ORT_DYLIB_PATH` select it, that `bench --backend both` times both in one process, and that
//! a bad library is an error naming it, not a panic. Without the feature, asking for onnxruntime
//! is refused with a clear message.
//!
//! Run alone: `ORT_DYLIB_PATH=... cargo test --release --features onnxruntime --test onnxruntime`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mcm_edge::runtime::{Backend, Models};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn tiny() -> PathBuf {
    Path::new(ROOT).join("models/tiny")
}

fn mcm_edge(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcm-edge"));
    cmd.args(args).current_dir(ROOT);
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[cfg(not(feature = "onnxruntime"))]
#[test]
fn without_the_feature_onnxruntime_is_refused_with_a_clear_message() {
    let err = Models::load(&tiny(), &Backend::onnxruntime(1)).err().expect("must refuse").to_string();
    assert!(err.contains("built without the onnxruntime feature"), "{err}");
    let out = mcm_edge(&["bench", "--model", "models/tiny", "--backend", "both", "--runs", "1", "--steps", "1"]).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("built without the onnxruntime feature") && !err.contains("panicked"), "{err}");
}

#[cfg(feature = "onnxruntime")]
mod support;

#[cfg(feature = "onnxruntime")]
mod with_the_feature {
    use super::*;

    use image::RgbImage;
    use mcm_edge::contract::{Maps, ModalityMap, build_cond};
    use mcm_edge::runtime::{Net, base_inputs, load_segmenter, timestep_tensor, InputSpec};
    use mcm_edge::runtime::{BackendKind, ModelError};
    use mcm_edge::diffusion::{GenerationParams, ImageGenerator, Pipeline, TextParams};
    use mcm_edge::diffusion::Noise;
    use ndarray::Array2;
    use tract_onnx::prelude::{IntoTensor, Tensor};
    use super::support::vectors::{max_abs_diff, model_dirs, random_inputs, verify_dir};

    /// A fresh scratch folder under the temp dir.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mcm-edge-ort-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Largest accepted max abs difference between onnxruntime and tract on the same inputs.
    const AGREEMENT: f32 = 1e-4;

    /// The library the tests load: `ORT_DYLIB_PATH`, which must name a file.
    fn library() -> PathBuf {
        let path = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()).map(PathBuf::from).unwrap_or_else(|| {
            panic!(
                "ORT_DYLIB_PATH is not set: the onnxruntime backend tests need a libonnxruntime shared library \
                 (scripts/test.sh sets it to the venv's onnxruntime/capi/libonnxruntime.so.*)"
            )
        });
        assert!(path.is_file(), "ORT_DYLIB_PATH={} is not a file", path.display());
        path
    }

    fn ort(threads: usize) -> Backend {
        Backend::new(BackendKind::Onnxruntime, Some(library()), threads)
    }

    /// `onnxruntime X.Y.Z` from the library's file name (`libonnxruntime.so.X.Y.Z`).
    fn expected_version() -> String {
        let real = library().canonicalize().unwrap();
        let name = real.file_name().unwrap().to_string_lossy().into_owned();
        name.rsplit_once(".so.").map(|(_, v)| v.to_string()).expect("the venv's library is named libonnxruntime.so.X.Y.Z")
    }

    /// Run `a` and `b` on the same inputs; their outputs must agree within [`AGREEMENT`].
    fn agree(label: &str, a: &Net, b: &Net, inputs: Vec<Tensor>) {
        let got_a = a.run(inputs.clone()).unwrap();
        let got_b = b.run(inputs).unwrap();
        assert_eq!(got_a.len(), got_b.len());
        for (i, (x, y)) in got_a.iter().zip(&got_b).enumerate() {
            let diff = max_abs_diff(x, y);
            println!("{label} output {i}: tract vs onnxruntime max abs diff {diff:.2e}");
            assert!(diff < AGREEMENT, "{label} output {i}: tract and onnxruntime differ by {diff}");
        }
    }

    #[test]
    fn onnxruntime_matches_tract_on_the_same_inputs() {
        for dir in model_dirs() {
            let tract = Models::load(&dir, &Backend::default()).unwrap();
            for threads in [1, 2] {
                let onnx = Models::load(&dir, &ort(threads)).unwrap();
                assert_eq!(onnx.base.backend_description(), format!("onnxruntime {}, {threads} thread{}", expected_version(), if threads == 1 { "" } else { "s" }));
                assert_eq!(onnx.base.onnxruntime_library().unwrap().canonicalize().unwrap(), library().canonicalize().unwrap());
                assert_eq!(tract.base.onnxruntime_library(), None);
                let [c, h, w] = tract.info.sample_shape();
                let s = tract.info.image.size;
                let mut noise = Noise::new(7);
                let x = noise.randn([1, c, h, w]);
                let label = format!("{} ({threads} thread(s))", dir.display());
                for t in [999.0, 500.0, 0.0] {
                    let inputs = random_inputs(&base_inputs(&tract.info), &mut noise, t);
                    agree(&format!("{label} base t={t}"), &tract.base, &onnx.base, inputs);
                }
                if let (Some(t_dec), Some(o_dec)) = (&tract.decoder, &onnx.decoder) {
                    agree(&format!("{label} decoder"), t_dec, o_dec, random_inputs(&[InputSpec::float("latent", vec![1, c, h, w])], &mut noise, 0.0));
                }
                if let (Some(m_tract), Some(m_onnx), Some(info)) = (&tract.mcm, &onnx.mcm, &tract.info.mcm) {
                    let eps = noise.randn([1, c, h, w]);
                    let cond = noise.randn([1, info.cond_channels, s, s]).mapv(|v| f32::from(v > 0.0));
                    let inputs = vec![x.clone().into_tensor(), eps.into_tensor(), cond.into_tensor(), timestep_tensor(250.0, 1)];
                    agree(&format!("{label} mcm"), m_tract, m_onnx, inputs);
                }
                if tract.info.segmenter.is_some() {
                    let seg_tract = load_segmenter(&dir, &tract.info, &Backend::default()).unwrap();
                    let seg_onnx = load_segmenter(&dir, &tract.info, &ort(threads)).unwrap();
                    let image = noise.randn([1, 3, s, s]).mapv(|v| v.clamp(-1.0, 1.0));
                    agree(&format!("{label} segmenter"), &seg_tract, &seg_onnx, vec![image.into_tensor()]);
                }
            }
        }
    }

    #[test]
    fn onnxruntime_reproduces_pytorch_test_vectors() {
        for dir in model_dirs() {
            verify_dir("onnxruntime", &dir, &ort(1));
        }
    }

    /// Two workers' generations at once: one session each (`Backend::concurrency`), and a third
    /// caller waits for a free session; every image is the one of a lone generation.
    #[test]
    fn concurrent_generations_get_a_session_each() {
        let one = Pipeline::load(&tiny(), &ort(1)).unwrap();
        let two = Pipeline::load(&tiny(), &ort(1).with_concurrency(2)).unwrap();
        let maps: Maps = [("sketch".to_string(), ModalityMap::Sketch(Array2::from_shape_fn((16, 16), |(y, x)| f32::from(u8::from(x == y)))))].into();
        let params: Vec<GenerationParams> =
            (0..3).map(|seed| GenerationParams { seed, steps: 3, strength: 1.0, eta: 0.0, text: TextParams::default() }).collect();
        let want: Vec<RgbImage> = params.iter().map(|p| one.generate(&maps, p).unwrap()).collect();
        let got: Vec<RgbImage> = std::thread::scope(|s| {
            let handles: Vec<_> = params.iter().map(|p| s.spawn(|| two.generate(&maps, p).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(got, want);
    }

    #[test]
    fn a_generation_through_onnxruntime_matches_tract() {
        let tract = Pipeline::load(&tiny(), &Backend::default()).unwrap();
        let onnx = Pipeline::load(&tiny(), &ort(1)).unwrap();
        let info = tract.info().clone();
        let seg = info.modalities.iter().find(|m| m.name == "segmentation").unwrap();
        let map = Array2::from_shape_fn((16, 16), |(y, x)| ((x / 4 + y / 8) % seg.channels) as u8);
        let maps: Maps = [("segmentation".to_string(), ModalityMap::Segmentation(map))].into();
        let params = GenerationParams { seed: 3, steps: 5, strength: 1.0, eta: 0.0, text: TextParams::default() };
        let (a, b): (RgbImage, RgbImage) = (tract.generate(&maps, &params).unwrap(), onnx.generate(&maps, &params).unwrap());
        let worst = a.as_raw().iter().zip(b.as_raw()).map(|(p, q)| p.abs_diff(*q)).max().unwrap();
        assert!(worst <= 1, "images differ by up to {worst}/255");
        let x = Noise::new(11).randn([1, 3, 16, 16]);
        let cond = build_cond(&info, &maps).unwrap();
        for t in [900, 10] {
            let diff = max_abs_diff(&tract.eps(&x, t, &cond, None, 1.5).unwrap(), &onnx.eps(&x, t, &cond, None, 1.5).unwrap());
            assert!(diff < AGREEMENT, "guided eps at t={t} differs by {diff}");
        }
    }

    #[test]
    fn a_missing_library_is_an_error_naming_it() {
        let err = Models::load(&tiny(), &Backend::new(BackendKind::Onnxruntime, Some("/nonexistent/libonnxruntime.so".into()), 1))
            .err()
            .expect("must refuse");
        assert!(matches!(err, ModelError::Backend(_)), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("/nonexistent/libonnxruntime.so") && err.contains("not found"), "{err}");
    }

    /// In a fresh process (the library is loaded once per process): a file that is not a
    /// library, and no library at all, are errors with exit status 1, never a panic.
    #[test]
    fn a_bad_or_absent_library_fails_the_command_cleanly() {
        let out_png = scratch("bad-lib").join("out.png");
        let not_a_library = tiny().join("model.toml");
        let args = ["generate", "--model", "models/tiny", "--steps", "1", "--backend", "onnxruntime"];
        let out = mcm_edge(&args)
            .args(["--ort-library", not_a_library.to_str().unwrap(), "--out", out_png.to_str().unwrap(), "segmentation=config/samples/segmentation/tablet-0.png"])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("cannot load") && err.contains("models/tiny/model.toml") && !err.contains("panicked"), "{err}");

        let out = mcm_edge(&args)
            .args(["--out", out_png.to_str().unwrap(), "segmentation=config/samples/segmentation/tablet-0.png"])
            .env_remove("ORT_DYLIB_PATH")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("no library given") && err.contains("ORT_DYLIB_PATH") && !err.contains("panicked"), "{err}");
        assert!(!out_png.exists());
    }

    /// `[runtime]` in edge.toml selects onnxruntime for `check` (and `run`); `generate --backend
    /// onnxruntime` finds the library through `ORT_DYLIB_PATH` alone.
    #[test]
    fn the_config_and_the_environment_select_onnxruntime() {
        let dir = scratch("config");
        let config = dir.join("edge.toml");
        let text = format!(
            "[mqtt]\ndevice_id = \"ort\"\n[model]\ndir = \"{}\"\n[runtime]\nbackend = \"onnxruntime\"\nonnxruntime_library = \"{}\"\nthreads = 2\n",
            tiny().display(),
            library().display()
        );
        std::fs::write(&config, text).unwrap();
        let out = mcm_edge(&["check", "--config", config.to_str().unwrap()]).env_remove("ORT_DYLIB_PATH").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout.contains(&format!("backend: onnxruntime {}, 2 threads", expected_version())), "{stdout}");

        std::fs::write(&config, format!("[mqtt]\ndevice_id = \"ort\"\n[model]\ndir = \"{}\"\n[runtime]\nbackend = \"onnxruntime\"\nonnxruntime_library = \"/nonexistent/libort.so\"\n", tiny().display())).unwrap();
        let out = mcm_edge(&["check", "--config", config.to_str().unwrap()]).output().unwrap();
        let err = stderr(&out);
        assert!(!out.status.success() && err.contains("edge.toml") && err.contains("/nonexistent/libort.so"), "{err}");

        let out_png = dir.join("out.png");
        let out = mcm_edge(&["generate", "--model", "models/tiny", "--steps", "2", "--backend", "onnxruntime", "--out", out_png.to_str().unwrap()])
            .arg("segmentation=config/samples/segmentation/tablet-0.png")
            .env("ORT_DYLIB_PATH", library())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(image::open(&out_png).unwrap().to_rgb8().dimensions(), (16, 16));
    }

    #[test]
    fn bench_times_both_backends_in_one_process() {
        let json = scratch("bench").join("bench.json");
        let out = mcm_edge(&["bench", "--model", "models/tiny", "--backend", "both", "--threads", "1,2", "--workers", "1,2", "--runs", "2", "--steps", "2"])
            .args(["--json", json.to_str().unwrap()])
            .env("ORT_DYLIB_PATH", library())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let reports = report["reports"].as_array().unwrap();
        let backends: Vec<&str> = reports.iter().map(|r| r["backend"].as_str().unwrap()).collect();
        let v = expected_version();
        let positive = |r: &serde_json::Value, key: &str| r[key].as_f64().is_some_and(|v| v > 0.0);
        let want = ["tract, 1 thread".to_string(), "tract, 2 threads".into(), format!("onnxruntime {v}, 1 thread"), format!("onnxruntime {v}, 2 threads")];
        assert_eq!(backends, want);
        for r in reports {
            let workers: Vec<u64> = r["throughput"].as_array().unwrap().iter().map(|t| t["workers"].as_u64().unwrap()).collect();
            assert_eq!(workers, [1, 2], "{r}");
            assert!(r["throughput"].as_array().unwrap().iter().all(|t| positive(t, "images_per_s")), "{r}");
        }
        assert!(reports.iter().all(|r| ["base_step_ms", "mcm_step_ms", "mcm_net_ms", "end_to_end_ms"].iter().all(|k| positive(r, k))), "{report}");
        assert!(reports[0].get("library").is_none(), "tract has no library");
        let reported = PathBuf::from(reports[2]["library"].as_str().unwrap());
        assert_eq!(reported.canonicalize().unwrap(), library().canonicalize().unwrap());
        let ratios = report["ratios"].as_array().unwrap();
        assert_eq!(ratios.len(), 3);
        assert!(ratios.iter().all(|r| r["baseline"] == "tract, 1 thread" && positive(r, "base_step") && positive(r, "mcm_net")), "{report}");
    }
}
