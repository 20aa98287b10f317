// Seed, steps and strength of a request, bounded by the `generation` block of the status; and for
// a text-conditional model (`generation.text`) its prompt and guidance scale.

/** Used while the status has no `generation` block (older devices). */
const GENERATION_FALLBACK = { steps: 4, strength: 1.5, max_steps: 200, max_strength: 10, sample_steps: null, text: false };
const MAX_GUIDANCE = 30;
const MAX_SEED = 2 ** 32 - 1;

export class GenerationParams {
  /**
   * @param {{seed: HTMLInputElement, randomSeed: HTMLInputElement, stepsSelect: HTMLSelectElement,
   *          stepsInput: HTMLInputElement, strength: HTMLInputElement, strengthValue: HTMLOutputElement,
   *          prompt: HTMLInputElement, promptRow: HTMLElement, guidance: HTMLInputElement, guidanceRow: HTMLElement}} els
   */
  constructor(els) {
    this.els = els;
    this.generation = null;
    this.generationKey = null;
    this.distilled = false; // only the status' sample_steps are accepted
    // Values the user picked are kept across status updates (while valid); the others follow
    // the device's defaults.
    this.touched = { steps: false, strength: false, guidance: false };
    els.seed.max = String(MAX_SEED);
    els.randomSeed.addEventListener('change', () => this.#syncSeed());
    els.stepsSelect.addEventListener('change', () => (this.touched.steps = true));
    els.stepsInput.addEventListener('change', () => (this.touched.steps = true));
    els.guidance.addEventListener('change', () => (this.touched.guidance = true));
    els.strength.addEventListener('input', () => {
      this.touched.strength = true;
      this.#showStrength();
    });
    this.#syncSeed();
    this.apply(undefined);
  }

  /** Adopt the device's limits and defaults (`generation` of the status, or the fallback). */
  apply(generation) {
    const g = { ...GENERATION_FALLBACK, ...generation };
    const key = JSON.stringify(g);
    if (key === this.generationKey) return;
    this.generationKey = key;
    this.generation = g;
    this.distilled = Array.isArray(g.sample_steps) && g.sample_steps.length > 0;
    this.#applySteps(g);
    this.#applyStrength(g);
    this.#applyText(g);
  }

  /**
   * `{seed, steps, strength}` for a request. With "random" ticked the page draws the seed itself
   * (the device's own seed policy is "fixed" by default, which would repeat the same image) and
   * shows it in the seed field, so that a result can be made again.
   */
  values() {
    const { els, generation } = this;
    const steps = this.distilled ? Number(els.stepsSelect.value) : clampInt(els.stepsInput.value, 1, generation.max_steps, generation.steps);
    const strength = clampNumber(els.strength.value, 0, generation.max_strength, generation.strength);
    const params = { steps, strength };
    if (generation.text) {
      const prompt = els.prompt.value.trim();
      if (prompt) params.prompt = prompt;
      if (els.guidance.value !== '') params.guidance_scale = clampNumber(els.guidance.value, 0, MAX_GUIDANCE, generation.guidance_scale);
    }
    if (els.randomSeed.checked) els.seed.value = String(Math.floor(Math.random() * (MAX_SEED + 1)));
    params.seed = clampInt(els.seed.value, 0, MAX_SEED, 0);
    return params;
  }

  #applySteps(g) {
    const { stepsSelect, stepsInput } = this.els;
    stepsSelect.hidden = !this.distilled;
    stepsInput.hidden = this.distilled;
    if (this.distilled) {
      const current = Number(stepsSelect.value);
      stepsSelect.replaceChildren(...g.sample_steps.map((n) => new Option(String(n), String(n))));
      const keep = this.touched.steps && g.sample_steps.includes(current);
      stepsSelect.value = String(keep ? current : g.sample_steps.includes(g.steps) ? g.steps : g.sample_steps[0]);
    } else {
      stepsInput.max = String(g.max_steps);
      const current = Number(stepsInput.value);
      const keep = this.touched.steps && Number.isInteger(current) && current >= 1 && current <= g.max_steps;
      stepsInput.value = String(keep ? current : g.steps);
    }
  }

  #applyStrength(g) {
    const { strength } = this.els;
    const current = Number(strength.value);
    strength.max = String(g.max_strength);
    strength.value = String(this.touched.strength && current <= g.max_strength ? current : g.strength);
    this.#showStrength();
  }

  /** Show the prompt and guidance fields only for a model that takes text. */
  #applyText(g) {
    const { prompt, promptRow, guidance, guidanceRow } = this.els;
    promptRow.hidden = guidanceRow.hidden = !g.text;
    if (!g.text) return;
    prompt.placeholder = g.prompt ? `default: ${g.prompt}` : 'what to generate';
    if (!this.touched.guidance && typeof g.guidance_scale === 'number') guidance.value = String(g.guidance_scale);
  }

  #showStrength() {
    this.els.strengthValue.value = Number(this.els.strength.value).toFixed(2);
  }

  #syncSeed() {
    this.els.seed.disabled = this.els.randomSeed.checked;
  }
}

function clampInt(text, lo, hi, fallback) {
  const n = Math.round(Number(text));
  return Number.isFinite(n) && text !== '' ? Math.min(hi, Math.max(lo, n)) : fallback;
}

function clampNumber(text, lo, hi, fallback) {
  const n = Number(text);
  return Number.isFinite(n) && text !== '' ? Math.min(hi, Math.max(lo, n)) : fallback;
}
