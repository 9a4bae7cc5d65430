"""The distillation losses: kd_loss (torch path and backend choice), its fused Triton kernel, CA-MKD weighting."""
