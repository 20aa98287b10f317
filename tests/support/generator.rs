//! A fake generator for the service tests: paints the class colours, strokes in black; and the
//! model it claims to be.

use super::*;

pub const SIZE: usize = 32;
pub const PALETTE: [[u8; 3]; 4] = [[120, 180, 255], [40, 160, 60], [30, 60, 200], [128, 128, 128]];
pub const NO_SEGMENTATION: [u8; 3] = [200, 200, 200];

pub const MODEL_TOML: &str = r#"
format = 1
[image]
size = 32
channels = 3
value_range = [-1.0, 1.0]
[schedule]
beta_schedule = "linear"
beta_start = 0.0001
beta_end = 0.02
num_train_timesteps = 1000
prediction_type = "epsilon"
[base]
file = "base.onnx"
[mcm]
file = "mcm.onnx"
cond_channels = 7
[[modalities]]
name = "segmentation"
kind = "segmentation"
channels = 4
classes = [
  { name = "sky", color = [120, 180, 255] },
  { name = "grass", color = [40, 160, 60] },
  { name = "water", color = [30, 60, 200] },
  { name = "rock", color = [128, 128, 128] },
]
[[modalities]]
name = "sketch"
kind = "sketch"
channels = 1
"#;

/// A strength at which the fake backend fails while running (an inference failure).
pub const FAILING_STRENGTH: f32 = 9.5;

/// A seed at which the fake generator takes four times its delay (to finish requests out of order).
pub const SLOW_SEED: u64 = 4444;

pub struct FakeGenerator {
    pub info: ModelInfo,
    pub delay: Duration,
    pub calls: AtomicUsize,
    /// Generations running now, and the most that ran at once.
    pub active: AtomicUsize,
    pub max_active: AtomicUsize,
}

impl FakeGenerator {
    pub fn new(delay: Duration) -> Arc<Self> {
        let info: ModelInfo = toml::from_str(MODEL_TOML).expect("model toml");
        Arc::new(FakeGenerator { info, delay, calls: AtomicUsize::new(0), active: AtomicUsize::new(0), max_active: AtomicUsize::new(0) })
    }
}

impl ImageGenerator for FakeGenerator {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn generate(&self, maps: &Maps, params: &GenerationParams) -> Result<RgbImage, GenerateError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if params.steps == 0 {
            return Err(GenerateError::Param("steps must be positive".into()));
        }
        if params.strength == FAILING_STRENGTH {
            let path = PathBuf::from("base.onnx");
            return Err(ModelError::Tract { path, message: "the backend failed (as asked)".into() }.into());
        }
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_active.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(if params.seed == SLOW_SEED { self.delay * 4 } else { self.delay });
        self.active.fetch_sub(1, Ordering::SeqCst);
        let seg = match maps.get("segmentation") {
            Some(ModalityMap::Segmentation(ids)) => Some(ids),
            _ => None,
        };
        let sketch = match maps.get("sketch") {
            Some(ModalityMap::Sketch(s)) => Some(s),
            _ => None,
        };
        Ok(RgbImage::from_fn(SIZE as u32, SIZE as u32, |x, y| {
            let (x, y) = (x as usize, y as usize);
            if sketch.is_some_and(|s| s[[y, x]] > 0.5) {
                return Rgb([0, 0, 0]);
            }
            Rgb(seg.map_or(NO_SEGMENTATION, |ids| PALETTE[ids[[y, x]] as usize]))
        }))
    }
}
