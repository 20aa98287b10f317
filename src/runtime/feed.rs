//! What the device feeds to each input of a net, read from the ONNX file itself: exporters
//! disagree on element types and ranks (a `timestep` may be a scalar, `[B]` float or `[B]` int64;
//! token ids int64 or int32), so every net is loaded with the contract's [`InputSpec`]s, the file's
//! declared inputs are matched to them by name (in any order), and each gets a [`Feed`]: the
//! element type and shape its tensors are cast and reshaped to before every run.

use tract_onnx::prelude::{DatumType, IntoTensor, Tensor, TractResult};

use super::checks::ContractMismatch;

/// The kind of value an input carries, which decides the element types and ranks accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// An f32 tensor of exactly the contract's rank (images, latents, `cond`, text embeddings).
    Float,
    /// The diffusion timestep: a scalar or `[B]`, f32, f64, int64 or int32 (fed as the file declares).
    Timestep,
    /// Token ids `[B, L]`, int64 or int32.
    TokenIds,
}

/// One input the contract feeds: its name, its shape with the batch first (1 on the device), and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// The input's name in the ONNX file (`sample`, `timestep`, `encoder_hidden_states`, ...).
    pub name: &'static str,
    /// Shape with the batch first, e.g. `[1, 4, 64, 64]`; `[1]` for a timestep.
    pub shape: Vec<usize>,
    pub kind: InputKind,
}

impl InputSpec {
    /// An f32 input of `shape`.
    pub fn float(name: &'static str, shape: Vec<usize>) -> Self {
        Self { name, shape, kind: InputKind::Float }
    }

    /// The `timestep` input, `[1]` (or a scalar, as the file declares).
    pub fn timestep() -> Self {
        Self { name: "timestep", shape: vec![1], kind: InputKind::Timestep }
    }

    /// Token ids `[1, max_length]`.
    pub fn token_ids(name: &'static str, max_length: usize) -> Self {
        Self { name, shape: vec![1, max_length], kind: InputKind::TokenIds }
    }
}

/// How one declared input of the file is fed: its contract spec (index into the specs), and the
/// element type and shape its tensor is converted to.
#[derive(Debug, Clone, PartialEq)]
pub struct Feed {
    /// Index of the input in the contract's spec list (the order the caller gives tensors in).
    pub spec: usize,
    pub name: String,
    pub datum_type: DatumType,
    pub shape: Vec<usize>,
}

impl Feed {
    /// `tensor` (the caller's: f32 for floats and timesteps, int64 for token ids, contract shape)
    /// as this input takes it.
    ///
    /// # Errors
    /// The cast or reshape fails (a tensor of another size than the spec).
    pub fn convert(&self, tensor: &Tensor) -> TractResult<Tensor> {
        let cast = if tensor.datum_type() == self.datum_type { tensor.clone() } else { tensor.cast_to_dt(self.datum_type)?.into_owned() };
        if cast.shape() == self.shape.as_slice() { Ok(cast) } else { cast.into_shape(&self.shape) }
    }
}

/// An input as the file declares it: name, element type (None when the file does not say) and
/// dims (`"?"` or a symbol for a dynamic one; None when the rank is unknown).
#[derive(Debug, Clone)]
pub struct Declared {
    pub name: String,
    pub datum_type: Option<DatumType>,
    pub dims: Option<Vec<String>>,
}

/// The feeds of a file whose inputs are `declared` (file order) for the contract's `specs`.
///
/// # Errors
/// [`ContractMismatch::Names`] when the names differ (a missing or an extra input),
/// [`ContractMismatch::ElementType`] for an element type the kind does not accept (e.g. float16:
/// export in float32), [`ContractMismatch::InputDims`] for other dims or ranks.
pub fn resolve_feeds(declared: &[Declared], specs: &[InputSpec]) -> Result<Vec<Feed>, ContractMismatch> {
    let mut got: Vec<String> = declared.iter().map(|d| d.name.clone()).collect();
    let mut want: Vec<String> = specs.iter().map(|s| s.name.to_string()).collect();
    got.sort();
    want.sort();
    if got != want {
        return Err(ContractMismatch::Names {
            what: "inputs",
            got: declared.iter().map(|d| d.name.clone()).collect(),
            want: specs.iter().map(|s| s.name.to_string()).collect(),
        });
    }
    declared
        .iter()
        .map(|d| {
            let spec = specs.iter().position(|s| s.name == d.name).expect("names compared above");
            feed(d, &specs[spec]).map(|(datum_type, shape)| Feed { spec, name: d.name.clone(), datum_type, shape })
        })
        .collect()
}

/// The element type and shape one declared input is fed with.
fn feed(d: &Declared, spec: &InputSpec) -> Result<(DatumType, Vec<usize>), ContractMismatch> {
    let accepted: &[DatumType] = match spec.kind {
        InputKind::Float => &[DatumType::F32],
        InputKind::Timestep => &[DatumType::F32, DatumType::F64, DatumType::I64, DatumType::I32],
        InputKind::TokenIds => &[DatumType::I64, DatumType::I32],
    };
    let datum_type = d.datum_type.unwrap_or(accepted[0]);
    if !accepted.contains(&datum_type) {
        return Err(ContractMismatch::ElementType {
            name: d.name.clone(),
            ty: format!("{datum_type:?}"),
            accepted: accepted.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", "),
        });
    }
    let dims_error = || ContractMismatch::InputDims { name: d.name.clone(), declared: d.dims.clone().unwrap_or_default(), shape: spec.shape.clone() };
    let shape = match (&d.dims, spec.kind) {
        (Some(dims), InputKind::Timestep) if dims.is_empty() => vec![],
        (Some(dims), _) => {
            let rank_ok = dims.len() == spec.shape.len();
            let fits = |(d, s): (&String, &usize)| d == "?" || d.parse::<usize>().map_or(true, |d| d == *s);
            if !(rank_ok && dims.iter().zip(&spec.shape).skip(1).all(fits)) {
                return Err(dims_error());
            }
            spec.shape.clone()
        }
        (None, _) => spec.shape.clone(),
    };
    Ok((datum_type, shape))
}

/// The caller's timestep tensor, f32 `[B]` (each [`Feed`] casts it to what the file takes).
pub fn timestep_tensor(t: f32, batch: usize) -> Tensor {
    tract_onnx::prelude::tract_ndarray::Array1::from_elem(batch, t).into_tensor()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(name: &str, dt: DatumType, dims: &[&str]) -> Declared {
        Declared { name: name.into(), datum_type: Some(dt), dims: Some(dims.iter().map(|d| d.to_string()).collect()) }
    }

    fn specs() -> Vec<InputSpec> {
        vec![InputSpec::float("sample", vec![1, 4, 8, 8]), InputSpec::timestep(), InputSpec::float("encoder_hidden_states", vec![1, 77, 32])]
    }

    #[test]
    fn timesteps_are_fed_as_each_exporter_declares_them() {
        let t = timestep_tensor(733.0, 1);
        for (dt, dims, shape) in [(DatumType::F32, vec!["batch"], vec![1]), (DatumType::I64, vec![], vec![]), (DatumType::I64, vec!["?"], vec![1])] {
            let files = [declared("timestep", dt, &dims), declared("sample", DatumType::F32, &["batch", "4", "8", "8"]), declared("encoder_hidden_states", DatumType::F32, &["batch", "77", "32"])];
            let feeds = resolve_feeds(&files, &specs()).unwrap();
            assert_eq!((feeds[0].spec, feeds[0].datum_type, &feeds[0].shape), (1, dt, &shape));
            let fed = feeds[0].convert(&t).unwrap();
            assert_eq!((fed.datum_type(), fed.shape()), (dt, shape.as_slice()));
            assert_eq!(fed.cast_to_scalar::<f32>().unwrap(), 733.0);
        }
    }

    #[test]
    fn wrong_types_names_and_dims_are_named() {
        let ok = |name: &str, dims: &[&str]| declared(name, DatumType::F32, dims);
        let f16 = [declared("sample", DatumType::F16, &["1", "4", "8", "8"]), ok("timestep", &["1"]), ok("encoder_hidden_states", &["1", "77", "32"])];
        let err = resolve_feeds(&f16, &specs()).unwrap_err().to_string();
        assert!(err.contains("sample") && err.contains("F16") && err.contains("F32"), "{err}");
        let missing = [ok("sample", &["1", "4", "8", "8"]), ok("timestep", &["1"])];
        let err = resolve_feeds(&missing, &specs()).unwrap_err().to_string();
        assert!(err.contains("encoder_hidden_states"), "{err}");
        let wide = [ok("sample", &["1", "4", "8", "8"]), ok("timestep", &["1"]), ok("encoder_hidden_states", &["1", "77", "768"])];
        let err = resolve_feeds(&wide, &specs()).unwrap_err().to_string();
        assert!(err.contains("768") && err.contains("77, 32"), "{err}");
    }
}
