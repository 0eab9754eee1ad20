"""Distilling a trained model into a few-step student (issue #26): progressive distillation (Salimans & Ho 2022),
written once for ddpm, edm and flow models on their Gaussian paths (paths.py)."""
