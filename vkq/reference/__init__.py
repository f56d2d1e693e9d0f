"""numpy references for every kernel: the ground truth the tests compare against."""
from vkq.reference.argmax import argmax_reference
from vkq.reference.attention import attention_reference
from vkq.reference.elementwise import add_reference, silu_mul_reference
from vkq.reference.kv_write import kv_write_reference
from vkq.reference.q4gsw import q4gsw_linear_reference
from vkq.reference.q8ta import (q8ta_accumulators, q8ta_linear_reference,
                                quantize_activation_int8)
from vkq.reference.rms_norm import rms_norm_reference
from vkq.reference.rope import rope_inv_freq, rope_reference, rope_tables
from vkq.reference.take_rows import take_rows_reference

__all__ = ["add_reference", "argmax_reference", "attention_reference", "kv_write_reference",
           "q4gsw_linear_reference", "q8ta_accumulators", "q8ta_linear_reference",
           "quantize_activation_int8", "rms_norm_reference", "rope_inv_freq", "rope_reference",
           "rope_tables", "silu_mul_reference", "take_rows_reference"]
