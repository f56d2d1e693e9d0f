"""Models built from vkq ops (vkq.models.llama)."""
