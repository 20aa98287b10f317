//! GroupNorm (Wu & He 2018) with its per-channel affine and an optional SiLU as one tract
//! operator, and the graph rewrite that puts it in place of the chain tract makes of torch's
//! export.
//!
//! torch exports `nn.GroupNorm` (opset 17) as Reshape to `[B, G, C/G * H * W]`,
//! `InstanceNormalization`, Reshape back, `Mul` by gamma and `Add` of beta; tract declutters the
//! instance norm into `Reduce<Sum>`, `Mul` by 1/n, `Sub` and its own `RmsNorm`. Run as they are,
//! those are six passes over the feature map, and the affine's `[1, C, 1, 1]` broadcast
//! (`OptBinChain(Mul+Add)` once optimised) alone took 18 % of the default base's time, 18 times
//! the SiLU after it on the same tensor. [`GroupNormSilu`] does the statistics and the
//! normalisation + affine + SiLU in three passes over each group, while it is in cache.

use std::sync::Arc;

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::math::{Add, Mul, Sub};
use tract_core::ops::nn::{Reduce, Reducer, RmsNorm, Silu};
use tract_linalg::routines::Func;

/// Lanes of the partial sums (a multiple of every SIMD width, so that the loop vectorises).
const LANES: usize = 16;

/// `y = silu?((x - mean_g) / sqrt(var_g + eps) * gamma_c + beta_c)` on `x` `[B, C, S...]` (f32,
/// channels on axis 1, any number of spatial axes), where `mean_g` and `var_g` (biased) are taken
/// over the `C / groups` channels and all spatial positions of each group `g` of each batch item,
/// as `torch.nn.GroupNorm` computes them; `silu(v) = v * sigmoid(v)`.
///
/// The statistics accumulate in f32 lanes summed in f64; the output is within a few ulps of the
/// unfused chain (checked against it in the tests and through the test vectors).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct GroupNormSilu {
    /// Groups G; divides C.
    pub groups: usize,
    /// eps added to the variance (scalar f32 tensor).
    pub eps: Arc<Tensor>,
    /// Per-channel scale `[C]` f32.
    pub gamma: Arc<Tensor>,
    /// Per-channel shift `[C]` f32.
    pub beta: Arc<Tensor>,
    /// Whether SiLU follows the affine.
    pub silu: bool,
}

impl Op for GroupNormSilu {
    fn name(&self) -> StaticName {
        if self.silu { "GroupNormSilu".into() } else { "GroupNorm".into() }
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("groups: {}, eps: {:?}, channels: {}, silu: {}", self.groups, self.eps, self.gamma.len(), self.silu)])
    }

    op_as_typed_op!();
}

/// Sum of `xs` (in [`LANES`] f32 partial sums, added in f64).
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += f(x);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&x| f64::from(f(x))).sum();
    acc.iter().map(|&a| f64::from(a)).sum::<f64>() + tail
}

impl GroupNormSilu {
    /// Normalise one group in place: `group` holds its `gamma.len()` channels of `spatial` values.
    fn group(&self, group: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32, silu: Option<&dyn tract_linalg::element_wise::ElementWise<f32>>) -> TractResult<()> {
        let n = group.len() as f64;
        let mean = (lane_sum(group, |x| x) / n) as f32;
        let var = lane_sum(group, |x| (x - mean) * (x - mean)) / n;
        let rstd = (1.0 / (var + f64::from(eps)).sqrt()) as f32;
        let spatial = group.len() / gamma.len();
        for ((channel, &g), &b) in group.chunks_exact_mut(spatial).zip(gamma).zip(beta) {
            let scale = g * rstd;
            let shift = b - mean * scale;
            for x in channel.iter_mut() {
                *x = *x * scale + shift;
            }
            if let Some(silu) = silu {
                silu.run(channel)?;
            }
        }
        Ok(())
    }
}

impl EvalOp for GroupNormSilu {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        ensure!(input.datum_type() == DatumType::F32, "{}: f32 input expected, got {:?}", self.name(), input.datum_type());
        let mut y = input.into_tensor();
        let (gamma, beta) = (self.gamma.try_as_plain_ram()?.as_slice::<f32>()?, self.beta.try_as_plain_ram()?.as_slice::<f32>()?);
        let eps = self.eps.cast_to_scalar::<f32>()?;
        ensure!(y.rank() >= 2 && y.shape()[1] == gamma.len(), "{}: input {:?} has not {} channels on axis 1", self.name(), y.shape(), gamma.len());
        ensure!(self.groups > 0 && gamma.len() % self.groups == 0, "{}: {} groups do not divide {} channels", self.name(), self.groups, gamma.len());
        let channels_per_group = gamma.len() / self.groups;
        let group_len = channels_per_group * y.shape()[2..].iter().product::<usize>();
        let silu = if self.silu { Some(Func::Silu.ew_f32()?) } else { None };
        let mut view = y.try_as_plain_ram_mut()?;
        let data = view.as_slice_mut::<f32>()?;
        let total = data.len();
        if group_len > 0 {
            tract_linalg::multithread::par_chunks_mut(data, group_len, total, |first, chunk| {
                for (ix, group) in chunk.chunks_exact_mut(group_len).enumerate() {
                    let g = (first + ix) % self.groups;
                    let channels = g * channels_per_group..(g + 1) * channels_per_group;
                    self.group(group, &gamma[channels.clone()], &beta[channels], eps, silu.as_deref())?;
                }
                Ok(())
            })?;
        }
        Ok(tvec![y.into_tvalue()])
    }
}

impl TypedOp for GroupNormSilu {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }

    /// A hint per element: 4 multiply-adds (the two sums and the affine), plus the 12 that
    /// tract counts for its own `Silu`.
    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let count: TDim = inputs[0].shape.iter().product();
        Ok(tvec!((Cost::FMA(DatumType::F32), count * if self.silu { 16 } else { 4 })))
    }

    as_op!();
}

/// The const value of `outlet`, if it has one.
fn konst(model: &TypedModel, outlet: OutletId) -> Option<Arc<Tensor>> {
    model.outlet_fact(outlet).ok()?.konst.clone()
}

/// The non-const input of a binary `node` and the value of its const input, when exactly one of
/// its two inputs is const.
fn with_const(model: &TypedModel, node: &TypedNode) -> Option<(OutletId, Arc<Tensor>)> {
    let [a, b] = node.inputs[..] else { return None };
    match (konst(model, a), konst(model, b)) {
        (None, Some(k)) => Some((a, k)),
        (Some(k), None) => Some((b, k)),
        _ => None,
    }
}

/// Whether `node` is a binary op of kind `B`.
fn is_bin<B: tract_core::ops::binary::BinMiniOp>(node: &TypedNode) -> bool {
    node.op_as::<TypedBinOp>().is_some_and(|op| op.0.is::<B>())
}

/// The only successor of `node`, when it has exactly one.
fn only_succ<'m>(model: &'m TypedModel, node: &TypedNode) -> Option<&'m TypedNode> {
    model.single_succ(node.id).ok().flatten()
}

/// A per-channel `[C]` vector from a const that broadcasts as `[1, C, 1, ...]` (or `[C, 1, ...]`).
fn per_channel(k: &Tensor, channels: usize) -> Option<Arc<Tensor>> {
    if k.datum_type() != DatumType::F32 || k.len() != channels {
        return None;
    }
    k.clone().into_shape(&[channels]).ok().map(Tensor::into_arc_tensor)
}

/// The group norm that ends at `rms` (tract's `RmsNorm` of `x - mean(x)` on `[B, G, N]`), if the
/// whole chain from torch's Reshape to the affine (and a `Silu` after it) is there: the
/// fused op and the outlet it replaces.
fn match_group_norm(model: &TypedModel, rms: &TypedNode) -> Option<(OutletId, GroupNormSilu, OutletId)> {
    let op = rms.op_as::<RmsNorm>()?;
    let sub = model.node(rms.inputs[0].node);
    if op.axis != 2 || !is_bin::<Sub>(sub) || model.outlet_successors(rms.inputs[0]).len() != 1 {
        return None;
    }
    // x - mean(x): mean = Reduce<Sum>(x) * (1/n).
    let (grouped, mean) = (sub.inputs[0], model.node(sub.inputs[1].node));
    let (sum, recip) = with_const(model, mean).filter(|_| is_bin::<Mul>(mean))?;
    let reduce = model.node(sum.node);
    let reduced = reduce.op_as::<Reduce>()?;
    if reduced.reducer != Reducer::Sum || reduced.axes[..] != [2] || reduce.inputs[0] != grouped {
        return None;
    }
    // Reshape [B, C, S...] -> [B, G, C/G * S]; used by the mean and the Sub only.
    let reshape = model.node(grouped.node);
    let x = *reshape.inputs.first()?;
    let x_fact = model.outlet_fact(x).ok()?;
    let g_fact = model.outlet_fact(grouped).ok()?;
    let x_shape = x_fact.shape.as_concrete()?.to_vec();
    let g_shape = g_fact.shape.as_concrete()?;
    if !reshape.op_is::<AxisOp>() || x_fact.datum_type != DatumType::F32 || x_shape.len() < 3 || g_shape.len() != 3 || model.outlet_successors(grouped).len() != 2 {
        return None;
    }
    let (channels, groups) = (x_shape[1], g_shape[1]);
    if g_shape[0] != x_shape[0] || groups == 0 || channels % groups != 0 || g_shape[2] * groups != x_shape[1..].iter().product::<usize>() {
        return None;
    }
    let recip = recip.cast_to_scalar::<f32>().ok()?;
    if (recip * g_shape[2] as f32 - 1.0).abs() > 1e-5 {
        return None;
    }
    // Reshape back, * gamma, + beta, SiLU?
    let back = only_succ(model, rms).filter(|n| n.op_is::<AxisOp>() && model.outlet_fact(n.id.into()).ok().and_then(|f| f.shape.as_concrete().map(|s| s == x_shape)) == Some(true))?;
    // tract declutters away a gamma of ones and a beta of zeros (torch's initial values).
    let mul = only_succ(model, back).filter(|n| is_bin::<Mul>(n) && with_const(model, n).is_some());
    let after_mul = mul.unwrap_or(back);
    let add = only_succ(model, after_mul).filter(|n| is_bin::<Add>(n) && with_const(model, n).is_some());
    let after_add = add.unwrap_or(after_mul);
    let gamma = match mul {
        Some(mul) => per_channel(&with_const(model, mul)?.1, channels)?,
        None => tensor1(&vec![1f32; channels]).into_arc_tensor(),
    };
    let beta = match add {
        Some(add) => per_channel(&with_const(model, add)?.1, channels)?,
        None => tensor1(&vec![0f32; channels]).into_arc_tensor(),
    };
    let silu = only_succ(model, after_add).filter(|n| n.op_as::<ElementWiseOp>().is_some_and(|e| e.0.is::<Silu>()));
    let end = silu.unwrap_or(after_add);
    let fused = GroupNormSilu { groups, eps: op.eps.clone(), gamma, beta, silu: silu.is_some() };
    Some((x, fused, end.id.into()))
}

/// Replace every torch GroupNorm (+ SiLU) chain of a decluttered f32 `model` by one
/// [`GroupNormSilu`] node named after the chain's last node with `.group_norm` appended (so the
/// name keeps the torch module's `norm`: the f16 translation leaves it in f32). Chains that do
/// not match exactly (other axes, a shared intermediate, non-const affine) are left as they are.
/// Returns how many were fused.
///
/// # Errors
/// A tract error if a patch cannot be applied (a bug: the patch replaces a fact by an equal one).
pub(super) fn fuse_group_norms(model: &mut TypedModel) -> TractResult<usize> {
    let found: Vec<_> = model.nodes().iter().filter_map(|n| match_group_norm(model, n)).collect();
    for (x, op, end) in &found {
        let mut patch = TypedModelPatch::default();
        let tap = patch.tap_model(model, *x)?;
        let name = format!("{}.group_norm", model.node(end.node).name);
        let out = patch.wire_node(name, op.clone(), &[tap])?;
        patch.shunt_outside(model, *end, out[0])?;
        patch.apply(model)?;
    }
    if !found.is_empty() {
        *model = std::mem::take(model).into_compact()?;
    }
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `torch.nn.GroupNorm` + SiLU, computed naively in f64 on `[B, C, S]`.
    fn reference(x: &[f32], [b, c, s]: [usize; 3], gamma: &[f32], beta: &[f32], op: &GroupNormSilu) -> Vec<f32> {
        let (groups, silu) = (op.groups, op.silu);
        let cg = c / groups;
        let mut y = vec![0f32; x.len()];
        for bi in 0..b {
            for g in 0..groups {
                let range = (bi * c + g * cg) * s..(bi * c + (g + 1) * cg) * s;
                let vals: Vec<f64> = x[range.clone()].iter().map(|&v| f64::from(v)).collect();
                let mean = vals.iter().sum::<f64>() / vals.len() as f64;
                let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
                for (k, ix) in range.enumerate() {
                    let ch = g * cg + k / s;
                    let v = (vals[k] - mean) / (var + 1e-5).sqrt() * f64::from(gamma[ch]) + f64::from(beta[ch]);
                    y[ix] = if silu { v / (1.0 + (-v).exp()) } else { v } as f32;
                }
            }
        }
        y
    }

    #[test]
    fn matches_torch_group_norm_on_odd_sizes() {
        // 2 batch items, 6 channels in 3 groups, 5x7 spatial (35: not a multiple of the lanes).
        let (b, c, h, w, groups) = (2, 6, 5, 7, 3);
        let x: Vec<f32> = (0..b * c * h * w).map(|i| ((i * 37 % 101) as f32 / 13.0).sin() * 3.0 + 0.5).collect();
        let gamma: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.25).collect();
        let beta: Vec<f32> = (0..c).map(|i| i as f32 * 0.1 - 0.2).collect();
        for silu in [false, true] {
            let op = GroupNormSilu {
                groups,
                eps: tensor0(1e-5f32).into_arc_tensor(),
                gamma: tensor1(&gamma).into_arc_tensor(),
                beta: tensor1(&beta).into_arc_tensor(),
                silu,
            };
            let input = Tensor::from_shape(&[b, c, h, w], &x).unwrap();
            let out = op.eval(&EvalContext::out_of_plan(), tvec![input.into_tvalue()]).unwrap().remove(0);
            assert_eq!(out.shape(), &[b, c, h, w]);
            let want = reference(&x, [b, c, h * w], &gamma, &beta, &op);
            for (got, want) in out.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().iter().zip(&want) {
                assert!((got - want).abs() < 1e-5, "silu {silu}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn refuses_other_types_and_channel_counts() {
        let op = GroupNormSilu {
            groups: 2,
            eps: tensor0(1e-5f32).into_arc_tensor(),
            gamma: tensor1(&[1f32; 4]).into_arc_tensor(),
            beta: tensor1(&[0f32; 4]).into_arc_tensor(),
            silu: true,
        };
        let f64_input = Tensor::zero::<f64>(&[1, 4, 2, 2]).unwrap();
        let err = op.eval(&EvalContext::out_of_plan(), tvec![f64_input.into_tvalue()]).unwrap_err();
        assert!(format!("{err}").contains("f32 input expected"), "{err}");
        let three_channels = Tensor::zero::<f32>(&[1, 3, 2, 2]).unwrap();
        let err = op.eval(&EvalContext::out_of_plan(), tvec![three_channels.into_tvalue()]).unwrap_err();
        assert!(format!("{err}").contains("4 channels"), "{err}");
    }
}
