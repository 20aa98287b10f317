//! `mcm-edge eval` end to end on the committed `models/tiny` fixture and a two-scene dataset
//! folder of six scenes written here, four scored and two the reference of the realism figure fsd
//! (random weights: only the plumbing and the value ranges are checked).
//! The fixture has segmentation, sketch and depth with a depth estimator, so every variant runs.

use std::path::Path;

use image::{Luma, Rgb, RgbImage};
use mcm_edge::runtime::Backend;
use mcm_edge::tools::eval::{EvalOptions, evaluate};

#[test]
fn eval_scores_every_variant_on_a_folder_dataset() {
    let data = std::env::temp_dir().join(format!("mcm-edge-eval-{}", std::process::id()));
    for sub in ["images", "segmentation", "sketch", "depth"] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
    }
    for (i, horizon) in [(0, 10u32), (1, 20), (2, 14), (3, 24), (4, 8), (5, 18)] {
        let name = format!("{i:05}.png");
        let (sky, grass) = (Rgb([135, 206, 235]), Rgb([0, 200, 0]));
        RgbImage::from_fn(32, 32, |_, y| if y < horizon { sky } else { grass }).save(data.join("segmentation").join(&name)).unwrap();
        RgbImage::from_fn(32, 32, |_, y| if y < horizon { Rgb([90, 140, 220]) } else { Rgb([40, 150, 40]) })
            .save(data.join("images").join(&name))
            .unwrap();
        image::GrayImage::from_fn(32, 32, |_, y| Luma([if y == horizon { 0 } else { 255 }])).save(data.join("sketch").join(&name)).unwrap();
        // 16-bit inverse depth: sky 0, the ground nearer towards the bottom
        image::ImageBuffer::<Luma<u16>, Vec<u16>>::from_fn(32, 32, |_, y| Luma([if y < horizon { 0 } else { (y * 2000) as u16 }]))
            .save(data.join("depth").join(&name))
            .unwrap();
    }
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    let report = evaluate(&model, &data, &EvalOptions { limit: 4, steps: 3, strength: 1.0, seed: 0 }, &Backend::default()).unwrap();
    assert_eq!((report.n, report.steps, report.fsd_reference), (4, 3, Some(2)));
    let r = &report;
    for v in [r.miou_mcm, r.miou_mcm_both, r.miou_mcm_all, r.miou_base, r.miou_ceiling] {
        assert!(v.is_some_and(|v| (0.0..=1.0).contains(&v)), "{report:?}");
    }
    for v in [r.edge_f1_mcm, r.edge_f1_mcm_both, r.edge_f1_mcm_all, r.edge_f1_base, r.edge_f1_ceiling] {
        assert!(v.is_some_and(|v| (0.0..=1.0).contains(&v)), "{report:?}");
    }
    for v in [r.fsd_mcm, r.fsd_mcm_both, r.fsd_mcm_all, r.fsd_base, r.fsd_ceiling] {
        assert!(v.is_some_and(|v| v.is_finite() && v >= 0.0), "{report:?}");
    }
    let depth = &report.dense["depth"];
    for v in [Some(depth.rmse_mcm), depth.rmse_mcm_all, Some(depth.rmse_base), Some(depth.rmse_ceiling)] {
        assert!(v.is_some_and(|v| v.is_finite() && v >= 0.0), "{depth:?}");
    }
    for v in [Some(depth.corr_mcm), depth.corr_mcm_all, Some(depth.corr_base), Some(depth.corr_ceiling)] {
        assert!(v.is_some_and(|v| (-1.0..=1.0).contains(&v)), "{depth:?}");
    }
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["dense"]["depth"].get("corr_ceiling").is_some(), "{json}");
    for key in ["miou_mcm", "miou_base", "miou_ceiling", "fsd_mcm", "fsd_ceiling", "edge_f1_mcm", "edge_f1_base", "n", "steps"] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    // The command line: several step counts give a list of reports, same seeds; a distilled model
    // defaults to its own count.
    let run = |model: &Path, extra: &[&str]| -> serde_json::Value {
        let out = data.join("report.json");
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_mcm-edge"))
            .args(["eval", "--limit", "1", "--model"])
            .arg(model)
            .arg("--data")
            .arg(&data)
            .arg("--json")
            .arg(&out)
            .args(extra)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
    };
    let list = run(&model, &["--steps", "2,3"]);
    assert_eq!(list.as_array().map(|l| l.iter().map(|r| r["steps"].as_u64()).collect::<Vec<_>>()), Some(vec![Some(2), Some(3)]));
    let distilled = run(&model.with_file_name("tiny-v"), &[]);
    assert_eq!(distilled["steps"], 4, "{distilled}");
    // A scored modality without its folder is a clear error naming the folder.
    std::fs::rename(data.join("depth"), data.join("depth.off")).unwrap();
    let err = evaluate(&model, &data, &EvalOptions { limit: 10, steps: 3, strength: 1.0, seed: 0 }, &Backend::default()).unwrap_err().to_string();
    assert!(err.contains("depth: no such folder") && err.contains("\"depth\" is scored"), "{err}");
    // A folder without images is a clear error naming it.
    let empty = data.join("nothing");
    std::fs::create_dir_all(empty.join("images")).unwrap();
    let err = evaluate(&model, &empty, &EvalOptions { limit: 10, steps: 3, strength: 1.0, seed: 0 }, &Backend::default()).unwrap_err().to_string();
    assert!(err.contains("images"), "{err}");
}
