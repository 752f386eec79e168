"""Evaluation of frozen encoders: the paper's classification probes (`classification`), segmentation probes
(`segmentation`), representational analysis (`analysis`) and the objective ablation (`ablation`)."""
