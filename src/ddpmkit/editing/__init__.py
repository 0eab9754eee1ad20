"""Editing trained models' images: inpainting (replacement, RePaint) and image-to-image (SDEdit, inversion)."""
