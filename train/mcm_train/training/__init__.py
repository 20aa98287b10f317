"""Training: the generic loop (`loop`), batches (`batches`), the trainers (`trainers`,
`controlnet`), the frozen base as a function (`frozen`), and training cost tools (`cost`,
`step_timer`, `bench`)."""
