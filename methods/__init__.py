"""The proposed method family (diffusion transfer), registered through `labelbench.methods`."""
