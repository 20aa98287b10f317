//! `mcm-edge info`: what a model directory costs on a board: each net's parameters (from
//! `model.toml`) and floating-point operations per run (tract's estimate, [`estimate_flops`]),
//! and what one sampling step and one image take from them. `mcm-train export-diffusers` records
//! these figures in `model.toml` (`flops` of each net).

use std::path::Path;

use serde::Serialize;

use crate::contract::ModelInfo;
use crate::diffusion::DEFAULT_GUIDANCE_SCALE;
use crate::runtime::{InputSpec, ModelError, base_inputs, decoder_inputs, estimate_flops, mcm_inputs, weights_bytes};

/// One net of the directory.
#[derive(Debug, Clone, Serialize)]
pub struct NetCost {
    /// Its section in model.toml: `base`, `mcm`, `decoder`, `text`.
    pub net: &'static str,
    pub file: String,
    /// Parameters as model.toml records them.
    pub parameters: Option<u64>,
    /// File size in bytes (weights included, or beside it as external data).
    pub bytes: u64,
    /// FLOPs of one run at batch 1 (2 per multiply-add).
    pub flops: u64,
}

/// The cost of a model directory.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCost {
    pub nets: Vec<NetCost>,
    /// Base passes per step at the model's guidance scale: 2 with classifier-free guidance, else 1.
    pub base_passes_per_step: u64,
    /// FLOPs of one sampling step: the base's passes and the MCM.
    pub flops_per_step: u64,
    /// FLOPs of one image of `steps` steps: the steps, the text encoder's passes and the decoder.
    pub flops_per_image: u64,
    pub steps: usize,
}

/// The cost of `dir` for images of `steps` steps.
///
/// # Errors
/// model.toml or a net fails to load or to be analysed.
pub fn model_cost(dir: &Path, steps: usize) -> Result<ModelCost, ModelError> {
    let info = ModelInfo::load(dir)?;
    let mut nets = Vec::new();
    let mut add = |net: &'static str, file: &str, parameters: Option<u64>, inputs: Vec<InputSpec>| -> Result<u64, ModelError> {
        let flops = estimate_flops(&dir.join(file), &inputs)?;
        nets.push(NetCost { net, file: file.to_string(), parameters, bytes: weights_bytes(&dir.join(file)), flops });
        Ok(flops)
    };
    let base = add("base", &info.base.file, info.base.parameters, base_inputs(&info))?;
    let mcm = match &info.mcm {
        Some(m) => add("mcm", &m.file, m.parameters, mcm_inputs(&info))?,
        None => 0,
    };
    let decoder = match &info.latent {
        Some(l) => add("decoder", &l.decoder.file, l.decoder.parameters, decoder_inputs(&info))?,
        None => 0,
    };
    let guided = info.text.as_ref().is_some_and(|t| info.base.timestep_cond.is_none() && t.guidance_scale.unwrap_or(DEFAULT_GUIDANCE_SCALE) > 1.0);
    let passes = if guided { 2 } else { 1 };
    let text = match &info.text {
        Some(t) => add("text", &t.file, t.parameters, vec![InputSpec::token_ids("input_ids", t.max_length)])?,
        None => 0,
    };
    let flops_per_step = passes * base + mcm;
    let flops_per_image = steps as u64 * flops_per_step + passes * text + decoder;
    Ok(ModelCost { nets, base_passes_per_step: passes, flops_per_step, flops_per_image, steps })
}

/// The human table of [`model_cost`]: a line per net and the totals, in GFLOP and MB.
pub fn format_cost(dir: &Path, cost: &ModelCost) -> String {
    let g = |f: u64| f as f64 / 1e9;
    let mut out = format!("{}:\n", dir.display());
    for n in &cost.nets {
        let params = n.parameters.map_or("?".into(), |p| format!("{:.3} M", p as f64 / 1e6));
        out += &format!("  {:<8} {:<22} {params:>11} parameters {:>9.1} MB {:>10.4} GFLOP per run\n", n.net, n.file, n.bytes as f64 / 1e6, g(n.flops));
    }
    let mcm = if cost.nets.iter().any(|n| n.net == "mcm") { " + MCM" } else { "" };
    out += &format!(
        "  one step: {:.4} GFLOP ({} base pass{}{mcm}); one image of {} steps: {:.4} GFLOP\n",
        g(cost.flops_per_step),
        cost.base_passes_per_step,
        if cost.base_passes_per_step == 1 { "" } else { "es" },
        cost.steps,
        g(cost.flops_per_image)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latent_text_fixture_costs_its_passes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-sd");
        let cost = model_cost(&dir, 3).unwrap();
        let flops = |net: &str| cost.nets.iter().find(|n| n.net == net).unwrap().flops;
        assert!(flops("base") > 0 && flops("mcm") > 0 && flops("decoder") > 0 && flops("text") > 0, "{cost:?}");
        assert_eq!(cost.base_passes_per_step, 2, "classifier-free guidance at 7.5");
        assert_eq!(cost.flops_per_step, 2 * flops("base") + flops("mcm"));
        assert_eq!(cost.flops_per_image, 3 * cost.flops_per_step + 2 * flops("text") + flops("decoder"));
        let pixel = model_cost(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny"), 4).unwrap();
        assert_eq!(pixel.base_passes_per_step, 1);
        assert!(format_cost(&dir, &cost).contains("one image of 3 steps"));
    }
}
