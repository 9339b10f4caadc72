"""Memory reading: self-learning QA synthesis, the teacher top-d cache, the LoRA student."""
