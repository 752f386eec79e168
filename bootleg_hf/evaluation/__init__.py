"""Evaluation of frozen encoders: the paper's classification probes (`classification`), segmentation probes
(`segmentation`), the paper's evaluation data sets in their official layouts (`datasets_paper`), representational
analysis (`analysis`) and the objective ablation (`ablation`)."""
