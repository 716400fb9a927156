"""Diffusion transfer (arXiv 2402.15216): DDPM pretraining on unlabeled CT slices, then
segmentation from its backbone with a linear head (`diffusion-linear`) or a fine-tuned
decoder (`diffusion-decoder`)."""
