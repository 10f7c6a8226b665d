"""The paper's qualitative results, computed from checkpoints."""
