//! Model loading: the ONNX files of a model directory as optimized tract plans, built once for
//! batch 1 and checked against `model.toml` (a mismatch names the file, the tensor and the shapes).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{Array4, ArrayD, Ix4};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::model_info::{ModelError, ModelInfo};

/// One optimized tract plan with the input/output names of the contract.
pub struct Net {
    path: PathBuf,
    plan: Arc<TypedRunnableModel>,
    outputs: usize,
}

impl Net {
    /// Load `path`, check that its inputs are `inputs` (name, shape with batch first; the batch
    /// axis may be symbolic in the file) and its outputs are `outputs` (names), fix the batch to
    /// 1, optimize and plan.
    ///
    /// # Errors
    /// [`ModelError::Io`] if missing, [`ModelError::Contract`] on a name/shape mismatch,
    /// [`ModelError::Tract`] if tract cannot load or optimize it.
    pub fn load(path: &Path, inputs: &[(&str, Vec<usize>)], outputs: &[&str]) -> Result<Self, ModelError> {
        let tract_err = |e: TractError| ModelError::Tract { path: path.to_path_buf(), message: format!("{e:#}") };
        let contract = |message: String| ModelError::Contract { path: path.to_path_buf(), message };
        if !path.is_file() {
            return Err(ModelError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
            });
        }
        let mut model = tract_onnx::onnx().model_for_path(path).map_err(tract_err)?;
        let in_names: Vec<String> = model.input_outlets().map_err(tract_err)?.iter().map(|o| model.node(o.node).name.clone()).collect();
        let want: Vec<&str> = inputs.iter().map(|(n, _)| *n).collect();
        if in_names != want {
            return Err(contract(format!("inputs are {in_names:?}, the contract needs {want:?}")));
        }
        for (ix, (name, shape)) in inputs.iter().enumerate() {
            let fact = model.input_fact(ix).map_err(tract_err)?;
            let declared: Vec<String> = fact.shape.dims().map(|d| d.concretize().map(|d| d.to_string()).unwrap_or("?".into())).collect();
            let rank_ok = declared.len() == shape.len();
            let dims_ok = rank_ok && declared.iter().zip(shape).skip(1).all(|(d, s)| d == "?" || d.parse::<usize>().map_or(true, |d| d == *s));
            if !dims_ok {
                return Err(contract(format!("input {name:?} is declared {declared:?}, model.toml needs [batch, {}]",
                    shape[1..].iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "))));
            }
            model.set_input_fact(ix, f32::fact(shape).into()).map_err(tract_err)?;
        }
        let out_names: Vec<String> = model
            .output_outlets()
            .map_err(tract_err)?
            .iter()
            .map(|o| model.outlet_label(*o).unwrap_or(&model.node(o.node).name).to_string())
            .collect();
        if out_names != outputs {
            return Err(contract(format!("outputs are {out_names:?}, the contract needs {outputs:?}")));
        }
        let plan = model.into_optimized().map_err(tract_err)?.into_runnable().map_err(tract_err)?;
        Ok(Self { path: path.to_path_buf(), plan, outputs: outputs.len() })
    }

    /// Run on `inputs` (in contract order) and return the outputs as `[B, C, H, W]` arrays.
    ///
    /// # Errors
    /// [`ModelError::Tract`] when tract fails or an output is not 4-D.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Array4<f32>>, ModelError> {
        let err = |message: String| ModelError::Tract { path: self.path.clone(), message };
        let out = self.plan.run(inputs.into_iter().map(|t| t.into_tvalue()).collect()).map_err(|e| err(format!("{e:#}")))?;
        out.into_iter()
            .take(self.outputs)
            .map(|v| {
                let a: ArrayD<f32> = v.into_tensor().into_plain_array::<f32>().map_err(|e| err(format!("{e:#}")))?;
                a.into_dimensionality::<Ix4>().map_err(|e| err(format!("output is not [B, C, H, W]: {e}")))
            })
            .collect()
    }
}

/// Time spent in one kind of operator during [`Net::profile`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpTime {
    /// tract's operator name after optimization (e.g. `Conv`, `OptMatMul`, `Reduce<Sum>`).
    pub op: String,
    /// Nodes of that operator in the plan.
    pub nodes: usize,
    /// Mean time per run, ms.
    pub ms: f64,
}

impl Net {
    /// Run `runs` times on `inputs`, timing every node; returns the time per operator kind,
    /// largest first (what tract's profiler shows, without its CLI).
    ///
    /// # Errors
    /// [`ModelError::Tract`] when tract fails.
    pub fn profile(&self, inputs: Vec<Tensor>, runs: usize) -> Result<Vec<OpTime>, ModelError> {
        use std::collections::{BTreeMap, BTreeSet};
        let err = |message: String| ModelError::Tract { path: self.path.clone(), message };
        let mut state = tract_core::plan::SimpleState::new(&self.plan).map_err(|e| err(format!("{e:#}")))?;
        let mut total: BTreeMap<String, f64> = BTreeMap::new();
        let mut nodes: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        let runs = runs.max(1);
        for _ in 0..runs {
            let inputs = inputs.iter().map(|t| t.clone().into_tvalue()).collect();
            state
                .run_plan_with_eval(inputs, |ctx, op_state, node, input| {
                    let start = std::time::Instant::now();
                    let out = tract_core::plan::eval(ctx, op_state, node, input);
                    let name = node.op().name().to_string();
                    *total.entry(name.clone()).or_default() += start.elapsed().as_secs_f64() * 1e3;
                    nodes.entry(name).or_default().insert(node.id);
                    out
                })
                .map_err(|e| err(format!("{e:#}")))?;
        }
        let mut times: Vec<OpTime> =
            total.into_iter().map(|(op, ms)| OpTime { nodes: nodes[&op].len(), op, ms: ms / runs as f64 }).collect();
        times.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(times)
    }
}

/// A `[B]` timestep tensor.
pub fn timestep_tensor(t: f32, batch: usize) -> Tensor {
    tract_ndarray::Array1::from_elem(batch, t).into_tensor()
}

/// The nets of a model directory, loaded once.
pub struct Models {
    pub info: ModelInfo,
    pub dir: PathBuf,
    /// `base.onnx`: (sample [1,C,H,W], timestep [1]) -> eps [1,C,H,W].
    pub base: Net,
    /// `mcm.onnx`: (sample, eps [1,C,H,W], cond [1,K,H,W], timestep [1]) -> gamma, beta [1,C,H,W].
    pub mcm: Option<Net>,
}

impl Models {
    /// Load and check `DIR/model.toml`, `base.onnx` and (when listed) `mcm.onnx`.
    ///
    /// # Errors
    /// Any [`ModelError`] of the files, naming the file.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let info = ModelInfo::load(dir)?;
        let (c, s) = (info.image.channels, info.image.size);
        let image = vec![1, c, s, s];
        let base = Net::load(&dir.join(&info.base.file), &[("sample", image.clone()), ("timestep", vec![1])], &["eps"])?;
        let mcm = match &info.mcm {
            Some(m) => Some(Net::load(
                &dir.join(&m.file),
                &[("sample", image.clone()), ("eps", image.clone()), ("cond", vec![1, m.cond_channels, s, s]), ("timestep", vec![1])],
                &["gamma", "beta"],
            )?),
            None => None,
        };
        Ok(Self { info, dir: dir.to_path_buf(), base, mcm })
    }
}

/// Load the reference segmenter of a model directory (`[segmenter]` in model.toml):
/// image [1, 3, H, W] in the model's value range -> logits [1, classes, H, W].
///
/// # Errors
/// No `[segmenter]` section, or any [`ModelError`] of the file.
pub fn load_segmenter(dir: &Path, info: &ModelInfo) -> Result<Net, ModelError> {
    let seg = info.segmenter.as_ref().ok_or_else(|| ModelError::Contract {
        path: dir.join("model.toml"),
        message: "no [segmenter] section: train one with `mcm-train segmenter`".into(),
    })?;
    let s = info.image.size;
    Net::load(&dir.join(&seg.file), &[("image", vec![1, 3, s, s])], &["logits"])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of the committed `models/tiny` fixture in a fresh temp dir, with `edit` applied to model.toml.
    fn tiny_copy(tag: &str, edit: impl Fn(String) -> String) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
        let dst = std::env::temp_dir().join(format!("mcm-edge-model-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dst).unwrap();
        for f in ["base.onnx", "mcm.onnx", "segmenter.onnx"] {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
        let toml = std::fs::read_to_string(src.join("model.toml")).unwrap();
        std::fs::write(dst.join("model.toml"), edit(toml)).unwrap();
        dst
    }

    #[test]
    fn loads_the_tiny_fixture() {
        let m = Models::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny")).unwrap();
        assert_eq!(m.info.image.size, 16);
        assert!(m.mcm.is_some());
    }

    #[test]
    fn size_mismatch_names_file_tensor_and_shapes() {
        let dir = tiny_copy("size", |t| t.replacen("size = 16", "size = 32", 1));
        let err = Models::load(&dir).err().expect("must refuse").to_string();
        assert!(err.contains("base.onnx") && err.contains("sample") && err.contains("32"), "{err}");
    }

    #[test]
    fn cond_channel_mismatch_is_refused() {
        let dir = tiny_copy("cond", |t| t.replace("cond_channels = 11", "cond_channels = 12"));
        let err = Models::load(&dir).err().expect("must refuse").to_string();
        assert!(err.contains("model.toml") && err.contains("cond_channels"), "{err}");
    }

    #[test]
    fn corrupt_onnx_is_refused_with_its_path() {
        let dir = tiny_copy("corrupt", |t| t);
        std::fs::write(dir.join("mcm.onnx"), b"not an onnx file").unwrap();
        let err = Models::load(&dir).err().expect("must refuse").to_string();
        assert!(err.contains("mcm.onnx"), "{err}");
    }

    #[test]
    fn missing_key_is_refused() {
        let dir = tiny_copy("key", |t| t.replace("num_train_timesteps = 1000\n", ""));
        let err = Models::load(&dir).err().expect("must refuse").to_string();
        assert!(err.contains("num_train_timesteps"), "{err}");
    }
}
