"""A finished run's student as something people use: `medal predict`, `medal export`, the model card."""
